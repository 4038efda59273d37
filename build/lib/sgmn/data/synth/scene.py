"""Scene simulation: what one clip shows, frame by frame, and what an annotator would box."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from PIL import ImageDraw

import numpy as np

from sgmn.data.synth import render as R
from sgmn.data.synth.config import SynthConfig
from sgmn.data.synth.world import Shop

SHOP_SCALE = 0.8          # shop images: silhouette spans 80% of the image


@dataclass
class ClipTruth:
    """What a clip shows and what an annotator would box."""
    clip_id: str
    frame_ids: list[str]
    frames: list                    # PIL images at output size
    boxes: list[list[list[float]]]  # per frame, every visible product, in the clip's slot order
    target_index: list[int]         # per frame, index of the sold product's box or -1
    target: int                     # product index in the shop
    distractors: list[int]
    depth_order: list[list[int]]    # per frame, the box indices from back to front
    times_s: list[float]            # per frame, seconds from the clip's start
    speed: list[float]              # per frame, the sold product's speed (frame sides / s)


@dataclass
class ClipStreams:
    """One random stream per phenomenon of a clip, so that changing one knob changes only what
    that knob draws: shops, layouts, text and everything else stay put across a sweep."""
    layout: np.random.Generator      # distractors: which, where, how big, in front or not
    handling: np.random.Generator    # the seller's behaviours with the sold product, touches
    variation: np.random.Generator   # turns, occlusions, host-only frames
    appearance: np.random.Generator  # the appearance gap: pose, light, focus blur, host, backdrop
    frame: np.random.Generator       # per-frame camera shake, tremor, blur jitter
    text: np.random.Generator        # ASR


def _host_frames(cfg: SynthConfig, rng, n_frames: int) -> np.ndarray:
    """A contiguous stretch where the camera is on the host only (skewed to short stretches),
    `variation` times the configured share."""
    lo, hi = cfg.host_shots
    frac = min(1.0, (lo + (hi - lo) * rng.random() ** 2) * cfg.variation)
    n = int(round(frac * n_frames))
    mask = np.zeros(n_frames, bool)
    start = int(rng.integers(0, n_frames - n + 1))
    if n:
        mask[start:start + n] = True
    return mask


def _random_pose(cfg: SynthConfig, rng, g: float, cx: float, cy: float, size: float) -> R.Pose:
    return R.Pose(cx=cx, cy=cy, size=size,
                  angle=rng.uniform(-1, 1) * cfg.rotation * g,
                  shear=rng.uniform(-1, 1) * cfg.shear * g,
                  squash=1.0 - rng.uniform(0, 1) * cfg.perspective * g,
                  tilt=rng.uniform(-1, 1) * cfg.perspective * g,
                  flip=bool(rng.random() < min(1.0, cfg.flip_rate * g)))


def _occlusion_events(cfg: SynthConfig, rng, product_frames: np.ndarray, boost: float) -> dict[int, str]:
    """frame -> 'out' | 'hand_full' | 'hand_partial' for the sold product."""
    if rng.random() >= min(1.0, cfg.occlusion_rate * cfg.variation * boost) or not product_frames.size:
        return {}
    frac = rng.uniform(*cfg.occluded_frames)
    n = int(round(frac * product_frames.size))
    frames = rng.choice(product_frames, size=n, replace=False) if n else []
    events = {}
    for f in sorted(int(x) for x in frames):
        if rng.random() < cfg.occlusion_full_rate:
            events[f] = "out" if rng.random() < 0.5 else "hand_full"
        else:
            events[f] = "hand_partial"
    return events


@dataclass
class Segment:
    """One behaviour of the seller with the sold product, from `t0` for `dur` seconds: the
    state (centre x, y; size factor; yaw in degrees) eases from `a` to `b` (smoothstep)."""
    kind: str            # hold | move | show | rest
    t0: float
    dur: float
    a: np.ndarray        # (4,) x, y, size factor, yaw
    b: np.ndarray
    held: bool           # a hand holds it (not while resting on the table)


KINDS = ("hold", "move", "show", "rest")
KIND_P = (0.35, 0.35, 0.15, 0.15)


def handling_schedule(cfg: SynthConfig, hnd, var, duration: float) -> list[Segment]:
    """The seller's behaviours over `duration` seconds: hold, move or lift, bring to the camera
    (show), put down on the table (rest); turns from the variation stream. Distances scale with
    `handling` (0 = held still), turn probability with `variation`."""
    h = cfg.handling
    p_turn = min(1.0, cfg.turn_rate * cfg.variation)
    state = np.array([hnd.uniform(0.3, 0.7), hnd.uniform(0.45, 0.65), 1.0, 0.0])
    t = -hnd.uniform(0, cfg.segment_s[1])  # the clip starts in the middle of a behaviour
    segs: list[Segment] = []
    while t < duration:
        kind = KINDS[int(hnd.choice(len(KINDS), p=KIND_P))]
        dur = hnd.uniform(*cfg.segment_s)
        goal = state.copy()
        point = np.array([hnd.uniform(0.2, 0.8), hnd.uniform(0.35, 0.72)])
        zoom = hnd.uniform(0.6, 1.0)
        if kind == "hold":
            goal[:2] += hnd.normal(0, 0.02, 2) * h
        elif kind == "move":
            goal[:2] += (point - state[:2]) * h
            # seconds from distance and speed, so test frames 3 s apart see 3x the displacement
            dist = float(np.linalg.norm(goal[:2] - state[:2]))
            dur = float(np.clip(dist / max(cfg.move_speed, 1e-6), 0.5, cfg.segment_s[1])) if h > 0 else dur
        elif kind == "show":
            goal[:2] += (np.array([0.5, 0.55]) - state[:2]) * h
            goal[2] = 1.0 + h * (cfg.show_zoom - 1.0) * zoom
        else:  # rest: put down on the table
            goal[:2] += (np.array([point[0], 0.74]) - state[:2]) * h
            goal[2] = 1.0
        turn, sign, amp = var.random() < p_turn, var.choice([-1.0, 1.0]), var.uniform(45.0, max(45.0, cfg.turn_max))
        goal[3] = sign * amp if turn else 0.0  # a turn shows another side; otherwise face the camera
        segs.append(Segment(kind, t, dur, state, goal, kind != "rest"))
        state, t = goal, t + dur
    return segs


def state_at(segs: list[Segment], t: float) -> tuple[np.ndarray, float, bool]:
    """The sold product's state at time t, its speed (frame sides / s, centre and size change
    together), and whether it is held."""
    seg = next((s for s in segs if s.t0 + s.dur > t), segs[-1])
    u = float(np.clip((t - seg.t0) / seg.dur, 0.0, 1.0))
    e, de = u * u * (3 - 2 * u), 6 * u * (1 - u) / seg.dur
    delta = seg.b - seg.a
    speed = (float(np.linalg.norm(delta[:2])) + 0.3 * abs(float(delta[2]))) * de
    return seg.a + delta * e, speed, seg.held


@dataclass
class Touch:
    """The seller briefly lifts distractor `index` (a position in the clip's distractor list)."""
    index: int
    t0: float
    t1: float
    lift: float


def _touch(cfg: SynthConfig, hnd, n_dis: int, duration: float) -> Touch | None:
    draw = hnd.random(), int(hnd.integers(max(1, n_dis))), hnd.uniform(0, duration), hnd.uniform(1.0, 3.0)
    lift = hnd.uniform(0.04, 0.1)
    if not n_dis or draw[0] >= cfg.touch_rate * min(1.0, cfg.handling):
        return None
    return Touch(draw[1], draw[2], draw[2] + draw[3], lift * min(1.0, cfg.handling))


def _apply_event(event: str | None, pose: R.Pose, rng, res: int, skin: R.RGB):
    """The sold product's pose and the hands in front of it for one frame's occlusion event."""
    if event == "out":  # the host swings it out of the picture
        off = 0.5 + 0.75 * pose.size
        cx, cy = [(0.5 - off, pose.cy), (0.5 + off, pose.cy), (pose.cx, 0.5 - off),
                  (pose.cx, 0.5 + off)][int(rng.integers(4))]
        return dataclasses.replace(pose, cx=cx, cy=cy), []
    if event == "hand_full":
        return pose, [R.Occluder(pose.cx * res, pose.cy * res, 0.8 * pose.size * res, skin)]
    if event == "hand_partial":  # a hand over one side of it
        a = rng.uniform(0, 2 * math.pi)
        r = rng.uniform(0.25, 0.45) * pose.size * res
        return pose, [R.Occluder((pose.cx + 0.45 * pose.size * math.cos(a)) * res,
                                 (pose.cy + 0.45 * pose.size * math.sin(a)) * res, r, skin)]
    return pose, []


def _layout(cfg: SynthConfig, shop: Shop, lay, g: float, target: int, n_dis: int, base_size: float):
    """Distractors on two shelves behind the seller, upright and still, a few in front on the
    table's near edge; a variant sibling of the sold product is often among them."""
    n_products = len(shop.products)
    siblings = shop.siblings.get(target, [])
    sib_first = bool(siblings) and lay.random() < cfg.sibling_in_view
    chosen = [siblings[int(lay.integers(len(siblings)))]] if sib_first and n_dis else []
    rest = [i for i in range(n_products) if i != target and i not in chosen]
    chosen += [rest[i] for i in lay.choice(len(rest), size=n_dis - len(chosen), replace=False)]
    shelves = [lay.uniform(0.26, 0.34), lay.uniform(0.52, 0.6)]
    poses, front = [], []
    for _ in chosen:
        size = base_size * lay.uniform(*cfg.distractor_scale)
        is_front = bool(lay.random() < cfg.front_rate)
        cx = lay.uniform(0.06, 0.94)
        cy = lay.uniform(0.9, 0.97) - size / 2 if is_front else shelves[int(lay.integers(2))] - size / 2
        poses.append(R.Pose(cx=cx, cy=cy, size=size, angle=lay.uniform(-1, 1) * 4 * g,
                            squash=1.0 - lay.uniform(0, 1) * cfg.perspective * g,
                            flip=bool(lay.random() < min(1.0, cfg.flip_rate * g))))
        front.append(is_front)
    return chosen, poses, front, shelves


def simulate_clip(cfg: SynthConfig, shop: Shop, sprites: list[R.Sprite], back_sprite, streams: ClipStreams,
                  clip_id: str, n_frames: int, frame_s: float, target: int, hard: bool = False) -> ClipTruth:
    """Render one clip selling product `target` of `shop`, frames `frame_s` seconds apart, with
    the boxes of every product. `back_sprite(i)` is product i seen from behind (no badge)."""
    res = 2 * cfg.image_size
    lay, hnd, var, app, frm = streams.layout, streams.handling, streams.variation, streams.appearance, streams.frame
    g = cfg.gap * (1.5 if hard else 1.0)
    n_dis = min(int(lay.integers(cfg.distractors[0], cfg.distractors[1] + 1)) + (3 if hard else 0),
                len(shop.products) - 1)
    base_size = lay.uniform(*cfg.scale)
    distractors, dis_poses, dis_front, shelves = _layout(cfg, shop, lay, g, target, n_dis, base_size)
    n_members = n_dis + 1
    slot = lay.permutation(n_members)  # order of boxes within a frame, random per clip
    target_slot = int(slot[-1])        # members: the distractors, then the sold product
    dis_placed = [R.place(sprites[i], p, res, margin=res // 4) for i, p in zip(distractors, dis_poses)]

    duration = n_frames * frame_s
    segs = handling_schedule(cfg, hnd, var, duration)
    has_hand, hand_side = hnd.random() < cfg.hand_rate, hnd.choice([-1.0, 1.0])
    touch = _touch(cfg, hnd, n_dis, duration)
    host = _host_frames(cfg, var, n_frames)
    events = _occlusion_events(cfg, var, np.flatnonzero(~host), 1.5 if hard else 1.0)

    held_pose = _random_pose(cfg, app, g, 0.5, 0.5, base_size)
    skin = R.SKIN[int(app.integers(len(R.SKIN)))]
    backdrop = R.backdrop(app, res, shop.palette, shop.noise)
    ImageDraw.Draw(backdrop).rectangle([0, 0.8 * res, res, res], fill=tuple(int(c * 0.8) for c in shop.palette[1]))
    R.draw_shelves(ImageDraw.Draw(backdrop), shelves, res, (120, 90, 60))
    seller, close_host = R.sample_host(app, close=False), R.sample_host(app, close=True)
    sway_period, sway_phase = app.uniform(3.0, 8.0), app.uniform(0, 2 * math.pi, 2)
    plain = R.backdrop(app, res, shop.palette, shop.noise) if host.any() else None
    lut = R.illumination_lut(brightness=app.uniform(-1, 1) * cfg.brightness * g,
                             contrast=1.0 + (app.uniform(*cfg.contrast) - 1.0) * g,
                             cast=1.0 + app.uniform(-1, 1, 3) * cfg.color_cast * g)
    blur = app.uniform(*cfg.blur) * g

    frames, boxes, target_index, depth, times, speeds = [], [], [], [], [], []
    for f in range(n_frames):
        t = f * frame_s
        shake = frm.normal(0, cfg.shake * g, 2)
        tremor = frm.normal(0, 0.004 * cfg.handling, 2)
        frame_blur = blur * frm.uniform(0.6, 1.4)
        sway = cfg.host_motion * np.sin(2 * math.pi * t / sway_period + sway_phase)
        state, speed, held = state_at(segs, t)
        if host[f]:
            bg = plain.copy()
            R.draw_host(ImageDraw.Draw(bg), close_host, res, *sway)
            img, slot_boxes, order = bg, [None] * n_members, []
            speed = 0.0
        else:
            bg = backdrop.copy()
            R.draw_host(ImageDraw.Draw(bg), seller, res, *sway)
            yaw = math.radians(state[3])
            back = math.cos(yaw) < 0
            pose = dataclasses.replace(
                held_pose, cx=state[0] + shake[0] + (tremor[0] if held else 0.0),
                cy=state[1] + shake[1] + (tremor[1] if held else 0.0), size=base_size * state[2],
                squash=held_pose.squash * max(0.12, abs(math.cos(yaw))), flip=held_pose.flip != back)
            pose, hands = _apply_event(events.get(f), pose, frm, res, skin)
            if held and has_hand and events.get(f) != "out":
                hands.append(R.Occluder((pose.cx + hand_side * 0.4 * pose.size) * res,
                                        (pose.cy + 0.3 * pose.size) * res, 0.16 * pose.size * res, skin,
                                        arm_to=((pose.cx + hand_side * 0.5) * res, 1.1 * res)))
            dx, dy = (int(v) for v in np.rint(shake * res))
            behind, in_front = [], []
            for k, (pl, is_front) in enumerate(zip(dis_placed, dis_front)):
                if touch is not None and k == touch.index and touch.t0 <= t <= touch.t1:
                    p = dis_poses[k]
                    pl = R.place(sprites[distractors[k]], dataclasses.replace(
                        p, cx=p.cx + shake[0], cy=p.cy - touch.lift + shake[1]), res, margin=res // 4)
                    hands.append(R.Occluder(p.cx * res, (p.cy - touch.lift + 0.35 * p.size) * res,
                                            0.16 * p.size * res, skin, arm_to=(p.cx * res, 1.1 * res)))
                else:
                    pl = R.shifted(pl, dx, dy)
                (in_front if is_front else behind).append((int(slot[k]), pl))
            sprite = back_sprite(target) if back else sprites[target]
            sold = R.blurred(R.place(sprite, pose, res), 2 * cfg.motion_blur * speed * cfg.image_size / 64)
            items = behind + [(target_slot, sold)] + in_front
            img, slot_boxes = R.compose(bg, items, hands, cfg.min_visible, n_members)
            order = [s for s, _ in items]
        frames.append(R.finish(img, cfg.image_size, lut, frame_blur))
        visible = [s for s in range(n_members) if slot_boxes[s] is not None]
        boxes.append([slot_boxes[s] for s in visible])
        target_index.append(visible.index(target_slot) if target_slot in visible else -1)
        depth.append([visible.index(s) for s in order if s in visible])
        times.append(round(t, 3))
        speeds.append(round(float(speed), 4))
    frame_ids = [f"{clip_id}-{f:04d}" for f in range(n_frames)]
    return ClipTruth(clip_id, frame_ids, frames, boxes, target_index, target, distractors, depth, times, speeds)


def shop_images(cfg: SynthConfig, shop: Shop, sprites: list[R.Sprite], rng: np.random.Generator):
    """(image_id, PIL image) of every shop image: centred canonical views, and second views
    photographed at another angle and crop."""
    res = 2 * cfg.image_size
    bg = R.shop_background(res, shop.shop_bg)
    out = []
    for p, sprite in zip(shop.products, sprites):
        img, _ = R.compose(bg, [(0, R.place(sprite, R.Pose(0.5, 0.5, SHOP_SCALE), res))], [], 0.0, 1)
        out.append((p.image_id, R.finish(img, cfg.image_size, None, 0.0)))
        if p.second_image_id:
            pose = R.Pose(*(0.5 + rng.uniform(-0.06, 0.06, 2)), SHOP_SCALE * rng.uniform(0.85, 1.15),
                          angle=rng.choice([-1, 1]) * rng.uniform(10, 30))
            img, _ = R.compose(bg, [(0, R.place(sprite, pose, res))], [], 0.0, 1)
            out.append((p.second_image_id, R.finish(img, cfg.image_size, None, 0.0)))
    return out
