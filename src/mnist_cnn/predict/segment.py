"""A number -> its digits: where each digit of "4217" is, so each can be made 28x28 and classified alone.

MNIST's network reads one centred digit. A house number or a ZIP code squeezed into one 28x28 image is a
smudge; LeNet's own use (reading cheques and ZIP codes) segmented first. On the ink map (preprocess.ink_map:
paper 0, ink up to 1):

    components   8-connected components of the strong ink (over 1/4 of full level), found on runs of
                 ink per row (union-find), so a photo of 10^6 pixels costs a few thousand Python steps
    merge        components whose column spans overlap by >= MERGE of the narrower one are one digit: the
                 flag of a 5, the bar of a 7 or the two strokes of a 4 drawn apart, a broken pen stroke
    short        a group much shorter than the tallest joins the digit its columns overlap most (a 5's flag
                 drawn apart); overlapping none, it is a speck (dust, a dot, JPEG noise) and is dropped
    split        a group much wider than the digits' height is touching digits: cut at the minima of its
                 column projection near where equal-width digits would meet
    layout       the groups count as a number only if they stand in one row (each overlaps the row's
                 median band vertically); otherwise the image is one thing, read as one digit (or not)

Returns boxes left to right; one box means "a single digit" and the caller reads the whole image as before.
"""

from __future__ import annotations

import numpy as np

STRONG = 0.25  # ink over this share of full level makes components (the faint rim joins them later)
MERGE = 0.6  # column overlap, as a share of the narrower group's width, that makes two groups one digit
JOIN_GAP = 1  # groups at most this many empty columns apart are one digit (digits stand a few pixels apart)
SHORT = 0.5  # a group shorter than this share of the tallest is part of a digit (a 5's flag) or a speck
SPLIT_ASPECT = 1.3  # a group wider than this many times the digits' height holds touching digits
DIGIT_ASPECT = 0.7  # the assumed width / height of one digit when a touching group is cut up
MAX_DIGITS = 12  # more groups than this in one row is a texture or writing, not a number
RIM = 2  # pixels of faint ink kept around a group's strong ink when it is cut out


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Boolean row -> [(start, end)] of its True runs (end exclusive)."""
    d = np.diff(np.concatenate([[0], row.view(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0].tolist(), np.nonzero(d == -1)[0].tolist(), strict=True))


def components(mask: np.ndarray) -> tuple[list[list[tuple[int, int, int]]], list[tuple[int, int, int, int, int]]]:
    """8-connected components of a boolean (H, W) mask: (runs per component as (row, start, end),
    stats per component as (x0, y0, x1, y1, pixels), boxes exclusive at x1, y1)."""
    parent: list[int] = []

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    runs, prev = [], []  # all runs (row, start, end); prev: indices of the previous row's runs
    for r in range(mask.shape[0]):
        cur = []
        if mask[r].any():
            j = 0
            for s, e in _runs(mask[r]):
                k = len(runs)
                runs.append((r, s, e))
                parent.append(k)
                cur.append(k)
                while j < len(prev) and runs[prev[j]][2] < s:  # previous runs ending before this one's reach
                    j += 1
                m = j
                while m < len(prev) and runs[prev[m]][1] <= e:  # overlapping (8-connected: touching diagonally)
                    a, b = find(k), find(prev[m])
                    if a != b:
                        parent[max(a, b)] = min(a, b)
                    m += 1
        prev = cur
    groups: dict[int, list] = {}
    for k, run in enumerate(runs):
        groups.setdefault(find(k), []).append(run)
    comps = list(groups.values())
    stats = []
    for c in comps:
        rows = [r for r, _, _ in c]
        stats.append((min(s for _, s, _ in c), min(rows), max(e for _, _, e in c), max(rows) + 1,
                      sum(e - s for _, s, e in c)))
    return comps, stats


def _merge(stats: list[tuple]) -> list[list[int]]:
    """Component indices grouped by column overlap, or by a gap of at most JOIN_GAP columns (a broken stroke's
    sliver beside its digit), repeated until no two groups overlap enough."""
    groups = [[i] for i in range(len(stats))]
    span = [(s[0], s[2]) for s in stats]
    changed = True
    while changed:
        changed = False
        for a, b in [(i, j) for i in range(len(groups)) for j in range(i + 1, len(groups))]:
            (a0, a1), (b0, b1) = span[a], span[b]
            overlap = min(a1, b1) - max(a0, b0)  # columns in common; -1: one empty column between them
            if overlap >= MERGE * min(a1 - a0, b1 - b0) or overlap >= -JOIN_GAP:
                groups[a] += groups.pop(b)
                span[a] = (min(a0, b0), max(a1, b1))
                span.pop(b)
                changed = True
                break
    return groups


def _attach_short(info: list[tuple]) -> list[tuple]:
    """Groups shorter than SHORT of the tallest (the flag of a 5, a 7's bar) join the tall group their columns
    overlap most; one that overlaps none is a speck, dropped. info rows: (x0, y0, x1, y1, pixels, components)."""
    tallest = max(t[3] - t[1] for t in info)
    tall = [list(t) for t in info if t[3] - t[1] >= SHORT * tallest]
    for t in (t for t in info if t[3] - t[1] < SHORT * tallest):
        overlaps = [min(t[2], u[2]) - max(t[0], u[0]) for u in tall]
        if overlaps and max(overlaps) > 0:
            u = tall[int(np.argmax(overlaps))]
            u[:5] = [min(u[0], t[0]), min(u[1], t[1]), max(u[2], t[2]), max(u[3], t[3]), u[4] + t[4]]
            u[5] = u[5] + t[5]
    return [tuple(u) for u in tall]


def _split(x0: int, x1: int, height: int, profile: np.ndarray) -> list[tuple[int, int]]:
    """A group's column range -> column ranges of the touching digits in it (cut at projection minima)."""
    width = x1 - x0
    k = max(1, int(round(width / (DIGIT_ASPECT * height))))
    if width <= SPLIT_ASPECT * height or k < 2:
        return [(x0, x1)]
    cuts, lo = [x0], x0
    for i in range(1, k):
        guess = x0 + i * width // k
        a, b = max(lo + 1, guess - width // (3 * k)), min(x1 - 1, guess + width // (3 * k))
        if b <= a:
            continue
        window = profile[a:b]
        if window.min() > 0.5 * np.median(profile[x0:x1][profile[x0:x1] > 0]):  # no waist: not touching digits
            return [(x0, x1)]
        lo = a + int(np.argmin(window))
        cuts.append(lo)
    cuts.append(x1)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def segment(ink: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Ink map (H, W), paper 0 and ink up to 1 -> [(box (x0, y0, x1, y1), the ink of that digit alone)], left to
    right; [] when there is no strong ink, one entry (the whole map) when it is not a row of several digits."""
    mask = ink > STRONG
    comps, stats = components(mask)
    if not comps:
        return []
    whole = [((0, 0, ink.shape[1], ink.shape[0]), ink)]
    groups = _merge(stats)
    info = []  # (x0, y0, x1, y1, pixels, component indices)
    for g in groups:
        s = [stats[i] for i in g]
        info.append((min(t[0] for t in s), min(t[1] for t in s), max(t[2] for t in s), max(t[3] for t in s),
                     sum(t[4] for t in s), g))
    info = _attach_short(info)
    if len(info) == 1 and (info[0][2] - info[0][0]) <= SPLIT_ASPECT * (info[0][3] - info[0][1]):
        return whole
    if len(info) > MAX_DIGITS or not _one_row(info):
        return whole
    info.sort(key=lambda t: t[0])  # left to right
    labels = np.zeros(ink.shape, np.int32)  # group number + 1 at each strong pixel
    for n, t in enumerate(info):
        for i in t[5]:
            for r, s, e in comps[i]:
                labels[r, s:e] = n + 1
    profile = mask.sum(axis=0)
    out = []
    for n, (x0, y0, x1, y1, _, _) in enumerate(info):
        mine = ink * _grow(labels == n + 1, RIM)
        pieces = _cut(mine, _split(x0, x1, y1 - y0, profile))
        if len(pieces) > 1 and min(b[3] - b[1] for b, _ in pieces) < SHORT * (y1 - y0):
            pieces = _cut(mine, [(x0, x1)])  # a cut that leaves a flag or a bar alone was not between digits
        out += pieces
    return out if len(out) > 1 else whole


def _cut(mine: np.ndarray, ranges: list[tuple[int, int]]) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """One group's ink, cut into column ranges -> [(box, that range's ink alone)], empty ranges left out."""
    out = []
    for a, b in ranges:
        part = np.zeros_like(mine)
        part[:, a:b] = mine[:, a:b]
        rows = np.nonzero(part.max(axis=1) > STRONG)[0]
        if rows.size:
            out.append(((a, int(rows[0]), b, int(rows[-1]) + 1), part))
    return out


def _one_row(info: list[tuple]) -> bool:
    """True when every group overlaps, vertically, at least half of the median group's band."""
    tops, bottoms = np.array([t[1] for t in info]), np.array([t[3] for t in info])
    top, bottom = float(np.median(tops)), float(np.median(bottoms))
    overlap = np.minimum(bottoms, bottom) - np.maximum(tops, top)
    return bool((overlap >= 0.5 * (bottom - top)).all())


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Boolean mask dilated by r pixels (a square), by shifting: no scipy needed."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] |= \
                mask[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
    return out
