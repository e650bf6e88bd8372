"""Deterministic generator of varied high-quality synthetic face images (no downloads).

Each face is drawn from its own seeded random state: face shape, skin tone and shading, eye shape
and iris colour, brows, nose, mouth (closed/smiling/open), hair style and colour, ears, clothing,
optional glasses/beard/freckles, background gradient and texture, and a small head roll and yaw.
Faces are placed like FFHQ-aligned crops (eyes a little above the centre), so the restorer sees
the layout real aligned face sets have. Rendering happens at 2x and is downsampled (anti-aliased).
"""

from __future__ import annotations

import cv2
import numpy as np

SKIN = np.array(
    [
        [255, 224, 196],
        [241, 194, 160],
        [224, 172, 130],
        [198, 134, 96],
        [161, 102, 70],
        [120, 75, 50],
        [90, 56, 38],
        [232, 190, 172],
    ],
    dtype=np.float64,
)
HAIR = np.array(
    [
        [20, 16, 14],
        [60, 40, 30],
        [110, 75, 45],
        [170, 130, 80],
        [220, 190, 130],
        [150, 60, 30],
        [200, 200, 200],
        [90, 90, 95],
    ],
    dtype=np.float64,
)
IRIS = np.array(
    [[60, 40, 20], [90, 60, 30], [50, 90, 140], [70, 110, 70], [110, 100, 80]], dtype=np.float64
)


def _col(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, base: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(base + rng.normal(0, amount, size=3), 0, 255)


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    c1, c2 = rng.uniform(20, 235, size=3), rng.uniform(20, 235, size=3)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:s, 0:s] / s
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    kind = rng.integers(3)
    if kind == 1:  # stripes
        period = rng.uniform(0.05, 0.2) * s
        img += (
            18
            * np.sin(2 * np.pi * (xx * s * np.cos(angle) + yy * s * np.sin(angle)) / period)[
                ..., None
            ]
        )
    elif kind == 2:  # blotchy low-frequency texture
        noise = rng.normal(0, 1, size=(8, 8, 3))
        img += 25 * cv2.resize(noise, (s, s), interpolation=cv2.INTER_CUBIC)
    return img


def _shade(
    img: np.ndarray, mask: np.ndarray, color: np.ndarray, lighting: np.ndarray, strength: float
) -> None:
    """Fill `mask` with `color` lit by the directional `lighting` ramp (in [-1, 1])."""
    ys, xs = np.nonzero(mask)
    m = mask[ys, xs, None].astype(np.float64) / 255.0
    lit = color[None] * (1.0 + strength * lighting[ys, xs, None])
    img[ys, xs] = img[ys, xs] * (1 - m) + lit * m


def generate_face(seed: int, size: int = 128) -> np.ndarray:
    """One HxWx3 uint8 face, fully determined by `seed` and `size`."""
    rng = np.random.default_rng(seed)
    s = 2 * size  # supersample
    img = _background(rng, s)
    cx = s * (0.5 + rng.uniform(-0.03, 0.03))
    cy = s * (0.52 + rng.uniform(-0.03, 0.03))
    fw = s * rng.uniform(0.24, 0.31)  # half-width of the face
    fh = fw * rng.uniform(1.18, 1.45)
    roll = rng.uniform(-12, 12)
    yaw = rng.uniform(-0.12, 0.12)  # shifts features sideways, as a turned head does
    skin = _jitter(rng, SKIN[rng.integers(len(SKIN))], 10)
    hair = _jitter(rng, HAIR[rng.integers(len(HAIR))], 8)
    light = (rng.uniform(-1, 1), rng.uniform(-1, 0.5))
    yy, xx = np.mgrid[0:s, 0:s] / s
    light = (xx - 0.5) * light[0] + (yy - 0.5) * light[1]

    # Clothing / shoulders.
    cloth = rng.uniform(10, 240, size=3)
    mask = np.zeros((s, s), np.uint8)
    cv2.ellipse(
        mask,
        (int(cx), int(s * 1.08)),
        (int(fw * 2.2), int(fh * 0.9)),
        0,
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
    )
    _shade(img, mask, cloth, light, 0.4)
    # Neck.
    mask[:] = 0
    cv2.rectangle(
        mask,
        (int(cx - fw * 0.45), int(cy + fh * 0.5)),
        (int(cx + fw * 0.45), int(cy + fh * 1.3)),
        255,
        -1,
    )
    _shade(img, mask, skin * 0.85, light, 0.4)
    # Hair behind the head.
    hair_style = rng.integers(4)  # 0 bald, 1 short, 2 long, 3 bun/volume
    if hair_style > 0:
        mask[:] = 0
        grow = {1: 1.08, 2: 1.2, 3: 1.3}[int(hair_style)]
        cv2.ellipse(
            mask,
            (int(cx), int(cy - fh * 0.12)),
            (int(fw * grow), int(fh * grow * 0.95)),
            roll,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
        )
        if hair_style == 2:
            cv2.rectangle(
                mask,
                (int(cx - fw * 1.2), int(cy)),
                (int(cx + fw * 1.2), int(cy + fh * rng.uniform(0.8, 1.4))),
                255,
                -1,
            )
        _shade(img, mask, hair, light, 0.5)
    # Ears.
    for side in (-1, 1):
        mask[:] = 0
        ex = cx + side * fw * (0.98 - yaw * side)
        cv2.ellipse(
            mask,
            (int(ex), int(cy + fh * 0.05)),
            (int(fw * 0.16), int(fh * 0.2)),
            0,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
        )
        _shade(img, mask, skin * 0.92, light, 0.5)
    # Face.
    mask[:] = 0
    cv2.ellipse(mask, (int(cx), int(cy)), (int(fw), int(fh)), roll, 0, 360, 255, -1, cv2.LINE_AA)
    chin = rng.uniform(0.0, 0.25)
    cv2.ellipse(
        mask,
        (int(cx), int(cy + fh * 0.35)),
        (int(fw * (0.8 + chin)), int(fh * 0.7)),
        roll,
        0,
        180,
        255,
        -1,
        cv2.LINE_AA,
    )
    _shade(img, mask, skin, light, rng.uniform(0.3, 0.7))
    face_mask = mask.copy()
    # Skin texture and freckles.
    tex = cv2.GaussianBlur(rng.normal(0, 1, size=(s, s)), (0, 0), rng.uniform(0.8, 2.0))
    img += (rng.uniform(3, 9) * tex)[..., None] * (face_mask[..., None] / 255.0)
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(15, 50))):
            px = cx + rng.normal(0, fw * 0.4)
            py = cy + rng.normal(fh * 0.05, fh * 0.15)
            cv2.circle(
                img, (int(px), int(py)), int(rng.integers(1, 4)), _col(skin * 0.7), -1, cv2.LINE_AA
            )
    # Fringe / bangs over the forehead.
    if hair_style in (1, 2, 3) and rng.random() < 0.6:
        cv2.ellipse(
            img,
            (int(cx + rng.uniform(-0.2, 0.2) * fw), int(cy - fh * 0.78)),
            (int(fw * rng.uniform(0.7, 1.0)), int(fh * rng.uniform(0.25, 0.4))),
            roll,
            0,
            180,
            _col(hair),
            -1,
            cv2.LINE_AA,
        )

    rot = np.deg2rad(roll)

    def place(dx: float, dy: float) -> tuple[int, int]:
        """Feature position relative to the face centre, rotated by the head roll."""
        dx += yaw * fw
        x = cx + dx * np.cos(rot) - dy * np.sin(rot)
        y = cy + dx * np.sin(rot) + dy * np.cos(rot)
        return int(x), int(y)

    eye_dx = fw * rng.uniform(0.36, 0.46)
    eye_dy = -fh * rng.uniform(0.08, 0.18)
    eye_w, eye_h = fw * rng.uniform(0.14, 0.2), fh * rng.uniform(0.045, 0.075)
    iris = _jitter(rng, IRIS[rng.integers(len(IRIS))], 10)
    brow_thick = int(max(2, fw * rng.uniform(0.04, 0.09)))
    brow_col = _col(hair * 0.8)
    for side in (-1, 1):
        ex, ey = place(side * eye_dx, eye_dy)
        cv2.ellipse(
            img, (ex, ey), (int(eye_w), int(eye_h)), roll, 0, 360, (245, 245, 240), -1, cv2.LINE_AA
        )
        cv2.circle(img, (ex + int(yaw * eye_w), ey), int(eye_h * 0.95), _col(iris), -1, cv2.LINE_AA)
        cv2.circle(
            img, (ex + int(yaw * eye_w), ey), int(eye_h * 0.45), (15, 10, 10), -1, cv2.LINE_AA
        )
        cv2.circle(
            img,
            (ex + int(yaw * eye_w) + int(eye_h * 0.3), ey - int(eye_h * 0.3)),
            max(1, int(eye_h * 0.18)),
            (255, 255, 255),
            -1,
            cv2.LINE_AA,
        )
        cv2.ellipse(
            img,
            (ex, ey),
            (int(eye_w), int(eye_h)),
            roll,
            180,
            360,
            _col(skin * 0.45),
            max(1, int(s / 128)),
            cv2.LINE_AA,
        )
        bx, by = place(side * eye_dx, eye_dy - fh * rng.uniform(0.1, 0.16))
        cv2.ellipse(
            img,
            (bx, by),
            (int(eye_w * 1.3), int(eye_h * 1.2)),
            roll,
            200,
            340,
            brow_col,
            brow_thick,
            cv2.LINE_AA,
        )
    # Nose.
    nose_len = fh * rng.uniform(0.18, 0.3)
    nx, ny = place(0, eye_dy + nose_len)
    tx, ty = place(0, eye_dy + fh * 0.05)
    cv2.line(img, (tx, ty), (nx, ny), _col(skin * 0.75), max(1, int(s / 100)), cv2.LINE_AA)
    for side in (-1, 1):
        px, py = place(side * fw * 0.09, eye_dy + nose_len)
        cv2.circle(img, (px, py), max(1, int(fw * 0.04)), _col(skin * 0.5), -1, cv2.LINE_AA)
    # Mouth.
    mx, my = place(0, eye_dy + nose_len + fh * rng.uniform(0.18, 0.26))
    mw = int(fw * rng.uniform(0.28, 0.45))
    lip = _col(_jitter(rng, np.array([170.0, 80.0, 80.0]), 20) * (0.6 + 0.4 * skin / 255))
    mouth = rng.integers(3)
    if mouth == 2:  # open, teeth showing
        cv2.ellipse(
            img, (mx, my), (mw, int(mw * 0.45)), roll, 0, 180, (60, 20, 25), -1, cv2.LINE_AA
        )
        cv2.ellipse(
            img,
            (mx, my),
            (int(mw * 0.85), int(mw * 0.18)),
            roll,
            0,
            180,
            (240, 240, 230),
            -1,
            cv2.LINE_AA,
        )
        cv2.ellipse(img, (mx, my), (mw, int(mw * 0.45)), roll, 0, 180, lip, 3, cv2.LINE_AA)
    else:
        curve = 0.35 if mouth == 1 else 0.12
        cv2.ellipse(
            img,
            (mx, my),
            (mw, int(mw * curve)),
            roll,
            0,
            180,
            lip,
            max(2, int(fw * 0.06)),
            cv2.LINE_AA,
        )
    # Beard stubble and glasses.
    if rng.random() < 0.2:
        beard = np.zeros((s, s), np.uint8)
        cv2.ellipse(
            beard,
            (int(cx), int(cy + fh * 0.45)),
            (int(fw * 0.9), int(fh * 0.55)),
            roll,
            0,
            180,
            255,
            -1,
            cv2.LINE_AA,
        )
        beard = (beard.astype(np.float64) / 255) * (face_mask / 255) * 0.5
        dots = (rng.random((s, s)) < 0.35).astype(np.float64) * beard
        img[:] = img * (1 - dots[..., None]) + hair[None, None] * 0.7 * dots[..., None]
    if rng.random() < 0.25:
        frame = _col(rng.uniform(0, 120, size=3))
        for side in (-1, 1):
            ex, ey = place(side * eye_dx, eye_dy)
            cv2.ellipse(
                img,
                (ex, ey),
                (int(eye_w * 1.5), int(eye_h * 2.6)),
                roll,
                0,
                360,
                frame,
                max(2, int(s / 90)),
                cv2.LINE_AA,
            )
        a, b = place(-eye_dx + eye_w * 1.5, eye_dy), place(eye_dx - eye_w * 1.5, eye_dy)
        cv2.line(img, a, b, frame, max(2, int(s / 90)), cv2.LINE_AA)

    img = np.clip(img, 0, 255).astype(np.uint8)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
