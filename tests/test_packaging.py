"""The package is complete without the checkout: a wheel installed (not editable) in a fresh
environment carries the config schema and the variant matrix, and validates a config."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path
    import sgmn
    from sgmn import config
    from sgmn.paths import SCHEMA_PATH, VARIANTS_PATH
    site = Path(sys.argv[1]).resolve()
    assert Path(sgmn.__file__).resolve().is_relative_to(site), sgmn.__file__   # the wheel, not the checkout
    assert SCHEMA_PATH.is_file() and VARIANTS_PATH.is_file()
    variants = config.load_variants()
    assert {"sgmn", "gra_only", "rice_box"} <= set(variants)
    resolved = config.resolve_variant(config.validate({"method": "rice"}), "rice_box", variants)
    assert resolved["method"] == "rice" and resolved["rice"]["box"] is True
    try:
        config.validate({"method": "nope"})
    except config.ConfigError as err:
        assert "method" in str(err)
    else:
        raise AssertionError("an unknown method validated")
    print("ok", len(variants))
""")


def test_a_wheel_installed_in_a_fresh_environment_validates_configs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(REPO)], check=True, cwd=tmp_path)
    wheel = next(dist.glob("sgmn_suite-*.whl"))
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    site = Path(subprocess.run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True)
    # the dependencies (jsonschema, PyYAML, ...) from this environment, as a plain path entry: its
    # .pth files, and so the editable install of the checkout, are not processed
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    out = subprocess.run([str(env / "bin" / "python"), "-c", CHECK, str(site)], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
