"""Renders as numpy arrays: shape, dtype, the GenCAD-Code style's colours and framing."""

import numpy as np
import pytest

import cadvlm
from conftest import box_program, occ_valid


def foreground_bbox(img):
    fg = np.any(img < 250, axis=2)
    ys, xs = np.nonzero(fg)
    return xs.min(), xs.max(), ys.min(), ys.max()


def test_gencad_render_is_an_rgb_uint8_image_with_the_real_framing(references):
    src = next(s for n, s, r in references if n.startswith("gencad-test100-dev/") and occ_valid(r))
    img = cadvlm.render(src)
    assert img.shape == (448, 448, 3) and img.dtype == np.uint8
    assert (img[0, 0] == 255).all() and (img[-1, -1] == 255).all()  # white background
    x0, x1, y0, y1 = foreground_bbox(img)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    # the projected bounding box fills a centred 400x300 box (GenCAD-Code framing), to a pixel or two
    assert abs(w - 400) <= 2 or abs(h - 300) <= 2, (w, h)
    assert w <= 402 and h <= 302
    assert abs((x0 + x1) / 2 - 223.5) <= 2 and abs((y0 + y1) / 2 - 223.5) <= 2
    img.setflags(write=True)  # a writable array of its own


def test_box_faces_are_the_flat_grey_and_edges_black():
    img = cadvlm.render(box_program(2, 2, 2), size=224)
    assert img.shape == (224, 224, 3)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (141, 141, 138) in colours  # axis-aligned faces in the isometric view
    assert (0, 0, 0) in colours  # edge lines


def test_multiview_and_failures():
    # an L-shaped part (a 3x1 and a 1x3 slab of different heights) looks different from each corner
    l_part = box_program(3, 1, 0.5).replace("solid =", "s1 =") + box_program(1, 3, 2).split("\n", 2)[2].replace(
        "solid =", "s2 ="
    ) + "solid = s1.union(s2)\n"
    assert cadvlm.execute(l_part)["ok"], cadvlm.execute(l_part)
    img = cadvlm.render(l_part, style="multiview", size=256)
    assert img.shape == (256, 256, 3)
    tiles = [img[:128, :128], img[:128, 128:], img[128:, :128], img[128:, 128:]]
    for i in range(4):
        assert (tiles[i] < 250).any()  # the part is in every tile
        for j in range(i):
            assert not np.array_equal(tiles[i], tiles[j]), (i, j)
    with pytest.raises(cadvlm.CadError) as e:
        cadvlm.render("x = (")
    assert e.value.kind == "syntax" and e.value.line == 1
