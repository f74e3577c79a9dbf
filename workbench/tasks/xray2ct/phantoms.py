"""Procedural chest CT phantoms in Hounsfield units with tissue labels (the ``xray2ct`` task).

torchio's pattern: :func:`sample_params` draws every random number into a JSON-serialisable dict;
:func:`render` is deterministic in it, so a case has the same anatomy at any grid size. Axes (X, Y, Z)
are RAS-like (X toward the patient's left, Y anterior, Z toward the head); the grid covers ``fov_mm``
centred on the origin, voxel ``i`` centred at ``(i + 0.5) * fov / size - fov / 2`` mm.

Anatomy: torso (soft tissue under fat), lungs (ellipsoids clipped by the rib cage, the mediastinum and
a diaphragm dome) with vessel trees from the hila, mediastinum, heart, aorta, spine (vertebral bodies,
discs, neural arches, cord), ribs and sternum. Shapes are signed-distance-like functions of body-frame
coordinates (voxel centres moved by a smooth displacement of a few mm, rotated about Z and shifted)
covering a voxel by ``clip(0.5 - sd / h, 0, 1)``, ``h`` the mean voxel size; tubes thinner than a voxel
are drawn one voxel wide with their occupancy scaled to keep their cross-section. Shapes are painted in
order, each mixed over what lies below: HU are partial-volume averages and a voxel's label is the class
holding the largest fraction of it (soft tissue includes fat, mediastinum, discs and cord).
"""

from __future__ import annotations

import math

import numpy as np

FOV_MM = (320.0, 320.0, 240.0)
LABELS = {0: "air/background", 1: "soft tissue", 2: "lung", 3: "bone", 4: "heart", 5: "vessel"}
HU_RANGE = (-1000.0, 1500.0)
AIR, SOFT, LUNG, BONE, HEART, VESSEL = range(6)


def sample_params(rng: np.random.Generator) -> dict:
    """Draw every parameter of one phantom.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.

    Returns
    -------
    dict
        JSON-serialisable parameters (lengths in mm, angles in degrees, values in HU) for :func:`render`.
    """
    def u(lo, hi):
        return float(rng.uniform(lo, hi))

    depth, post, fat = u(170, 230), u(0.45, 0.55), u(5, 20)
    body = {"a": u(120, 145), "b_post": depth * post, "b_ant": depth * (1 - post), "fat": fat,
            "fat_hu": u(-120, -80), "soft_hu": u(25, 55)}
    spine = {"rx": u(18, 24), "ry": u(14, 19), "height": u(20, 30), "disc": u(4, 8), "z_offset": u(0, 40),
             "shell": u(1.5, 3.0), "kyphosis": u(0, 12), "canal": u(7, 10), "arch": u(4, 6),
             "cortical_hu": u(700, 1000), "cancellous_hu": u(200, 350), "arch_hu": u(450, 750),
             "disc_hu": u(70, 95), "cord_hu": u(20, 40)}
    wall = (depth - 2 * fat) * u(0.17, 0.22)      # from the posterior fat line to the spinal canal's centre
    y_canal = -body["b_post"] + fat + wall
    spine["y"] = y_canal + spine["canal"] + 1 + spine["ry"]
    spine["spinous"] = max(3.0, (wall - spine["canal"] - spine["arch"]) * u(0.6, 0.9))
    z_top, z_base = u(92, 112), u(-95, -70)
    cage = {"a": body["a"] - fat - u(12, 22), "b_post": -y_canal + u(-3, 5), "b_ant": body["b_ant"] - fat - u(14, 22),
            "taper": u(0.15, 0.3), "z0": (z_top + z_base) / 2, "z1": z_top}
    cage_depth, m, dome_r = cage["b_ant"] + cage["b_post"], u(14, 24), u(30, 50)
    lungs = [{"side": side, "cx": u(0.45, 0.6) * cage["a"], "cy": (cage["b_ant"] - cage["b_post"]) / 2 + u(-8, 8),
              "ax": u(0.6, 0.75) * cage["a"], "ay": u(0.5, 0.6) * cage_depth,
              "z_base": z_base + u(-4, 4), "z_top": z_top + u(-5, 3), "dome": dome, "apex": u(2.5, 4.0)}
             for side, dome in ((-1, dome_r), (1, dome_r - u(0, 15)))]
    semi = [u(0.45, 0.55) * cage["a"], u(0.27, 0.33) * cage_depth, u(42, 54)]
    hz = z_base + lungs[1]["dome"] * u(0.5, 0.9) + semi[2] * u(0.5, 0.75)
    heart = {"centre": [u(12, 30), cage["b_ant"] - semi[1] - u(0, 8), hz], "semi": semi, "yaw": u(20, 40),
             "tilt": u(10, 25), "hu": u(30, 50)}
    hy = heart["centre"][1]
    mediastinum = {"wx": m + u(2, 12), "y0": spine["y"], "y1": cage["b_ant"], "z0": hz, "hu": u(-40, 40)}
    r_ao, z_arch, x_as = u(11, 14), z_top - u(35, 50), u(-10, 0)
    x_d, y_d = spine["rx"] * 0.5 + r_ao * 0.7, spine["y"] + spine["ry"] + r_ao * 0.5
    p1, p2, p3 = (np.array(p) for p in ([x_as, hy - 0.3 * semi[1], z_arch - 15],
                                        [(x_as + x_d) / 2, (hy + y_d) / 2, z_arch + 15], [x_d, y_d, z_arch - 15]))
    arch = [list(map(float, (1 - t) ** 2 * p1 + 2 * t * (1 - t) * p2 + t ** 2 * p3)) for t in np.linspace(0, 1, 7)]
    points = [[x_as, hy - 0.2 * semi[1], hz + 0.3 * semi[2]], *arch, [x_d, y_d, -160.0]]
    vessels = []
    for lu in lungs:
        s = lu["side"]
        hilum = np.array([s * (m + u(4, 10)), lu["cy"] + u(-15, 5),
                          lu["z_base"] + (lu["z_top"] - lu["z_base"]) * u(0.4, 0.5)])
        for d in ((0.4 * s, 0.0, 1.0), (s, 0.3, 0.3), (s, -0.3, -0.2), (0.5 * s, -0.6, -1.0), (0.4 * s, 0.6, -1.0)):
            d, length = np.array(d) + rng.uniform(-0.25, 0.25, 3), u(35, 50)
            _vessel_tree(rng, hilum, d / np.linalg.norm(d), length, u(4.5, 5.5), 4, vessels)
    rib_r, gap0, spacing, z0, ribs = u(4, 6.5), u(25, 40), u(20, 30), z_top - 5 - u(5, 15), []
    for k in range(12):                # ribs 8-10 end further from the sternum, 11-12 float
        z = z0 - k * spacing + u(-2, 2)
        gap = gap0 if k < 7 else gap0 + (k - 6) * u(10, 20) if k < 10 else cage["a"] * u(0.6, 0.8)
        if z > -170:
            ribs.append([z, u(55, 90), min(7.0, max(4.0, rib_r + u(-0.5, 0.5))), gap])   # z0, drop, radius, gap
    return {"body": body, "cage": cage, "lungs": lungs, "lung_medial": m, "lung_hu": u(-900, -800),
            "lung_gradient": u(0, 40), "blood_hu": u(35, 55), "vessels": vessels, "heart": heart,
            "mediastinum": mediastinum, "aorta": {"points": points, "r": r_ao}, "spine": spine,
            "ribs": {"levels": ribs, "shell": u(1.2, 2.0)},
            "sternum": {"y": cage["b_ant"] + u(3, 4), "wx": u(12, 18), "wy": u(5, 7), "z1": z_top - u(25, 40),
                        "z0": hz - semi[2] * u(0.3, 0.6)},
            "pose": {"angle_deg": u(-10, 10), "shift_mm": [u(-3, 3), u(-3, 3), u(-8, 8)]},
            "deformation": {"amp": rng.uniform(0.3, 1.2, (3, 3)).tolist(),
                            "k": (2 * np.pi / rng.uniform(120, 400, (3, 3, 3))).tolist(),
                            "phase": rng.uniform(0, 2 * np.pi, (3, 3, 3)).tolist()}}


def _vessel_tree(rng, start, direction, length, radius, generations, out):
    """Append the segments ``[x0, y0, z0, x1, y1, z1, r0, r1]`` of a bifurcating tree to ``out``."""
    end, r_end = start + length * direction, radius * rng.uniform(0.62, 0.72)
    out.append([float(v) for v in (*start, *end, radius, r_end)])
    if generations > 1:
        w = np.cross(direction, rng.normal(size=3))
        w /= np.linalg.norm(w)
        for sign in (1, -1):
            th = math.radians(rng.uniform(20, 45))
            _vessel_tree(rng, end, math.cos(th) * direction + sign * math.sin(th) * w,
                         length * rng.uniform(0.65, 0.8), r_end, generations - 1, out)


class _Grid:
    """Body-frame coordinates ``q`` (float32, mm) of the voxel centres; index boxes of body-frame boxes."""

    def __init__(self, params, size, fov_mm):
        self.n, self.fov = int(size), np.asarray(fov_mm, float)
        self.shape, self.vox, self.h = (self.n,) * 3, self.fov / self.n, float(np.mean(self.fov / self.n))
        axes = [((np.arange(self.n) + 0.5) * v - f / 2) for v, f in zip(self.vox, self.fov)]
        amp, k, ph = (np.asarray(params["deformation"][key], float) for key in ("amp", "k", "phase"))
        self.dmax = amp.sum(axis=1)    # bound of each displacement component
        world = []
        for c in range(3):
            p = np.zeros(self.shape, np.float32) + axes[c].astype(np.float32).reshape(np.roll([-1, 1, 1], c))
            for j in range(3):
                f = [np.cos(k[c, j, i] * axes[i] + ph[c, j, i]).astype(np.float32) for i in range(3)]
                p += (f[0] * np.float32(amp[c, j]))[:, None, None] * f[1][None, :, None] * f[2][None, None, :]
            world.append(p)
        th = math.radians(params["pose"]["angle_deg"])
        self.c, self.s, self.t = math.cos(th), math.sin(th), [float(v) for v in params["pose"]["shift_mm"]]
        wx, wy = world[0] - self.t[0], world[1] - self.t[1]
        self.q = (self.c * wx + self.s * wy, self.c * wy - self.s * wx, world[2] - self.t[2])

    def slices(self, lo, hi):
        """Index slices (maybe empty) holding every voxel whose body-frame position may lie in ``[lo, hi]`` (mm)."""
        q = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)
        w = np.stack([self.c * q[:, 0] - self.s * q[:, 1], self.s * q[:, 0] + self.c * q[:, 1], q[:, 2]], 1) + self.t
        lo_w, hi_w = w.min(0) - self.dmax - self.vox, w.max(0) + self.dmax + self.vox
        i0 = np.clip(np.floor((lo_w + self.fov / 2) / self.vox - 0.5), 0, self.n).astype(int)
        i1 = np.clip(np.ceil((hi_w + self.fov / 2) / self.vox - 0.5) + 1, 0, self.n).astype(int)
        return tuple(slice(a, max(a, b)) for a, b in zip(i0, i1))


class _Canvas:
    """HU and per-class fractions, painted shape by shape."""

    def __init__(self, shape):
        self.hu, self.frac = np.full(shape, -1000.0, np.float32), np.zeros((6, *shape), np.float32)
        self.frac[AIR] = 1.0

    def paint(self, sl, occ, cls, hu, core=None):
        """Cover ``occ`` of voxels ``sl`` by class ``cls`` of ``hu`` (``(shell_hu, core_hu)`` with ``core``)."""
        keep = 1.0 - occ
        self.hu[sl] = self.hu[sl] * keep + (occ * hu if core is None else (occ - core) * hu[0] + core * hu[1])
        self.frac[(slice(None), *sl)] *= keep
        self.frac[cls][sl] += occ


def _step(sd, h):
    return np.clip(0.5 - sd / h, 0.0, 1.0)


def _ellipsoid(coords, semi):
    """Approximate signed distance (mm) to an axis-aligned ellipse or ellipsoid (semi-axes may be arrays)."""
    k0 = np.sqrt(sum((c / s) ** 2 for c, s in zip(coords, semi)))
    k1 = np.sqrt(sum((c / s / s) ** 2 for c, s in zip(coords, semi)))
    return (k0 - 1.0) * (k0 + 1e-6) / (k1 + 1e-8)


def _box(coords, half):
    return np.maximum.reduce([np.abs(c) - h for c, h in zip(coords, half)])


def _cage_scale(cg, z):
    """The rib cage narrows toward the lung apices."""
    return 1.0 - cg["taper"] * np.clip((z - cg["z0"]) / (cg["z1"] - cg["z0"]), 0.0, 1.0) ** 2


def _tubes(g, segs, shell=0.0):
    """Union occupancy of tapered tubes ``[x0, y0, z0, x1, y1, z1, r0, r1]`` and of their cores (radius - shell)."""
    out, core = np.zeros(g.shape, np.float32), np.zeros(g.shape, np.float32)
    for seg in segs:
        a, b, r0, r1 = np.array(seg[:3], float), np.array(seg[3:6], float), float(seg[6]), float(seg[7])
        sl = g.slices(np.minimum(a, b) - max(r0, r1), np.maximum(a, b) + max(r0, r1))
        x, y, z = (c[sl] - float(ai) for c, ai in zip(g.q, a))
        abx, aby, abz = (float(v) for v in b - a)
        t = np.clip((x * abx + y * aby + z * abz) / (abx * abx + aby * aby + abz * abz + 1e-9), 0.0, 1.0)
        d = np.sqrt((x - t * abx) ** 2 + (y - t * aby) ** 2 + (z - t * abz) ** 2)
        r = r0 + (r1 - r0) * t
        for vol, rr in ((out, r), (core, np.maximum(r - shell, 0.0))) if shell else ((out, r),):
            big = np.maximum(rr, g.h)
            np.maximum(vol[sl], _step(d - big, g.h) * (rr / big) ** 2, out=vol[sl])
    return out, core


def _rib_segments(params):
    """Each rib: from the vertebral body out along the cage ellipse at its level, dropping toward the front."""
    cg, sp = params["cage"], params["spine"]
    segs = []
    for z0, drop, r, gap in params["ribs"]["levels"]:
        s = float(_cage_scale(cg, z0))
        a, bp, ba = cg["a"] * s + r + 1, cg["b_post"] * s + r + 1, cg["b_ant"] * s + r + 1
        t0, t1 = -math.acos(min((sp["rx"] + 8) / a, 1.0)), math.acos(min(gap / a, 1.0))
        ts = np.linspace(t0, t1, 11)
        zs = z0 - drop * ((ts - t0) / (t1 - t0)) ** 1.2
        y_head = sp["y"] + sp["kyphosis"] * (z0 / 150) ** 2 - 0.3 * sp["ry"]
        for side in (-1, 1):
            pts = [(side * 0.7 * sp["rx"], y_head, z0 + 2)] + [
                (side * a * math.cos(t), (bp if t < 0 else ba) * math.sin(t), float(zz)) for t, zz in zip(ts, zs)]
            segs += [[*p, *q, r, r] for p, q in zip(pts[:-1], pts[1:])]
    return segs


def render(params: dict, size: int, fov_mm=FOV_MM) -> tuple[np.ndarray, np.ndarray]:
    """Draw a phantom on a ``size``-cubed grid.

    Parameters
    ----------
    params : dict
        Parameters from :func:`sample_params` (or their JSON round trip).
    size : int
        Voxels along each axis.
    fov_mm : sequence of float, optional
        Field of view (X, Y, Z) in mm, centred on the origin.

    Returns
    -------
    hu : numpy.ndarray
        float32 ``(size, size, size)``, Hounsfield units within ``HU_RANGE``.
    labels : numpy.ndarray
        uint8 ``(size, size, size)``, the dominant class of each voxel (keys of ``LABELS``).
    """
    g = _Grid(params, size, fov_mm)
    h, (X, Y, Z), cv, full, inf = g.h, g.q, _Canvas(g.shape), (slice(None),) * 3, 1e4
    b, cg, m, sp = params["body"], params["cage"], params["lung_medial"], params["spine"]
    bb = np.where(Y > 0, np.float32(b["b_ant"]), np.float32(b["b_post"]))
    for da, hu_key in ((0.0, "fat_hu"), (b["fat"], "soft_hu")):
        cv.paint(full, _step(_ellipsoid((X, Y), (b["a"] - da, bb - da)), h), SOFT, b[hu_key])
    lung_occ = np.zeros(g.shape, np.float32)
    for lu in params["lungs"]:
        s = lu["side"]
        sl = g.slices([min(s * m, s * cg["a"]), -cg["b_post"], lu["z_base"] - 5],
                      [max(s * m, s * cg["a"]), cg["b_ant"], lu["z_top"] + 5])
        x, y, z = X[sl], Y[sl], Z[sl]
        dx, dy, sc = x - s * lu["cx"], y - lu["cy"], _cage_scale(cg, z)
        w = np.sqrt(np.clip(1.0 - np.clip((z - lu["z_base"]) / (lu["z_top"] - lu["z_base"]), 0.0, 1.0) ** lu["apex"],
                            0.01, 1.0))           # cross-section scale: a rounded apex
        dome = lu["z_base"] + lu["dome"] * np.clip(1.0 - (dx / lu["ax"]) ** 2 - (dy / lu["ay"]) ** 2, 0.0, None)
        b_cage = np.where(y > 0, np.float32(cg["b_ant"]), np.float32(cg["b_post"])) * sc
        o = _step(np.maximum.reduce([_ellipsoid((dx, dy), (lu["ax"] * w, lu["ay"] * w)), z - lu["z_top"],
                                     _ellipsoid((x, y), (cg["a"] * sc, b_cage)), dome - z, m - s * x]), h)
        np.maximum(lung_occ[sl], o, out=lung_occ[sl])
        cv.paint(sl, o, LUNG, params["lung_hu"] - params["lung_gradient"] * y / 100.0)
    cv.paint(full, _tubes(g, params["vessels"])[0] * lung_occ, VESSEL, params["blood_hu"])
    md = params["mediastinum"]
    sl = g.slices([-md["wx"], md["y0"], md["z0"]], [md["wx"], md["y1"], inf])
    wy = (md["y1"] - md["y0"]) / 2 + 2
    sd = np.maximum(_ellipsoid((X[sl], Y[sl] - (md["y0"] + md["y1"]) / 2), (md["wx"], wy)), md["z0"] - Z[sl])
    cv.paint(sl, _step(sd, h), SOFT, md["hu"])
    hr = params["heart"]
    (cx, cy, cz), r = hr["centre"], max(hr["semi"])
    sl = g.slices(np.subtract(hr["centre"], r), np.add(hr["centre"], r))
    yw, tl = math.radians(hr["yaw"]), math.radians(hr["tilt"])
    x, y, z = X[sl] - cx, Y[sl] - cy, Z[sl] - cz
    u, v = math.cos(yw) * x + math.sin(yw) * y, math.cos(yw) * y - math.sin(yw) * x
    u, w = math.cos(tl) * u - math.sin(tl) * z, math.cos(tl) * z + math.sin(tl) * u
    cv.paint(sl, _step(_ellipsoid((u, v, w), hr["semi"]), h), HEART, hr["hu"])
    pts, r = params["aorta"]["points"], params["aorta"]["r"]
    cv.paint(full, _tubes(g, [[*p, *q, r, r] for p, q in zip(pts[:-1], pts[1:])])[0], VESSEL, params["blood_hu"])
    rx, ry, cn, ar, sh = sp["rx"], sp["ry"], sp["canal"], sp["arch"], sp["shell"]
    sl = g.slices([-(rx + cn + 40), sp["y"] - ry - 2 * cn - ar - sp["spinous"] - 15, -inf],
                  [rx + cn + 40, sp["y"] + ry + sp["kyphosis"] + 5, inf])
    bone_hu = (sp["cortical_hu"], sp["cancellous_hu"])
    x, z = X[sl], Z[sl]
    y = Y[sl] - (sp["y"] + sp["kyphosis"] * (z / 150.0) ** 2)        # relative to the vertebral bodies
    period = sp["height"] + sp["disc"]
    zc = sp["z_offset"] + (np.floor((z - sp["z_offset"]) / period) + 0.5) * period    # nearest vertebra
    dzs = np.abs(z - zc) - sp["height"] / 2
    cv.paint(sl, _step(_ellipsoid((x, y), (rx - 1, ry - 1)), h), SOFT, sp["disc_hu"])
    core = _step(np.maximum(_ellipsoid((x, y), (rx - sh, ry - sh)), dzs + sh), h)
    cv.paint(sl, _step(np.maximum(_ellipsoid((x, y), (rx, ry)), dzs), h), BONE, bone_hu, core)
    yk = y + ry + cn + 1                                                # relative to the canal
    dc = np.sqrt(x * x + yk * yk)
    ring = np.maximum(np.abs(dc - cn - ar / 2) - ar / 2, dzs + 3)
    spinous = _box((x, yk + cn + ar + sp["spinous"] / 2, z - zc + 5), (3, sp["spinous"] / 2, 7))
    transverse = _box((np.abs(x) - cn - 12, yk, z - zc), (12, 4.5, 5))
    cv.paint(sl, _step(np.minimum.reduce([ring, spinous, transverse]), h), BONE, sp["arch_hu"])
    cv.paint(sl, _step(dc - cn, h), SOFT, sp["cord_hu"])
    o, core = _tubes(g, _rib_segments(params), shell=params["ribs"]["shell"])
    cv.paint(full, o, BONE, bone_hu, core)
    st, sh = params["sternum"], params["ribs"]["shell"]
    sl = g.slices([-st["wx"], st["y"] - st["wy"], st["z0"]], [st["wx"], st["y"] + st["wy"], st["z1"]])
    x, y, z = X[sl], Y[sl] - st["y"], np.abs(Z[sl] - (st["z0"] + st["z1"]) / 2) - (st["z1"] - st["z0"]) / 2
    core = _step(np.maximum(_ellipsoid((x, y), (st["wx"] - sh, st["wy"] - sh)), z + sh), h)
    cv.paint(sl, _step(np.maximum(_ellipsoid((x, y), (st["wx"], st["wy"])), z), h), BONE, bone_hu, core)
    return np.clip(cv.hu, *HU_RANGE).astype(np.float32), np.argmax(cv.frac, axis=0).astype(np.uint8)


def simulate_phantom(seed: int, size: int = 64, fov_mm=FOV_MM) -> tuple[np.ndarray, np.ndarray, dict]:
    """A seeded phantom: ``render(sample_params(np.random.default_rng(seed)), size, fov_mm)`` and its parameters.

    Parameters
    ----------
    seed : int
        Seed of ``numpy.random.default_rng``; ``size`` and ``fov_mm`` as for :func:`render`.

    Returns
    -------
    tuple
        ``(hu, labels, params)``: the arrays of :func:`render` and the dict of :func:`sample_params`.
    """
    params = sample_params(np.random.default_rng(seed))
    return (*render(params, size, fov_mm), params)
