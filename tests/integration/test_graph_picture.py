"""`depgate graph -o svg|png|mermaid`: the dependency graph drawn by the real Graphviz `dot` (Debian's graphviz,
`make system-deps`), from objects in files (-f), no cluster needed.

- examples/microservices drawn as SVG (parsed as XML: its nodes and edges are the graph's) and as PNG (a valid
  image: signature, every chunk's CRC, IHDR's size sane, IDAT inflating to exactly the rows IHDR says);
- docs/graph-microservices.svg (the README's picture) is what `make graph-picture` draws now, and another
  renderer (librsvg's rsvg-convert) draws it as a PNG of the size the SVG declares, with ink on it;
- a policy's status.blocking draws its edge red, a cycle's edges orange, in the DOT, the SVG and Mermaid;
- without dot on PATH, -o svg says what to install.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "microservices"
PICTURE = REPO / "docs" / "graph-microservices.svg"
SVG = "{http://www.w3.org/2000/svg}"
MICROSERVICES_NODES = {f"microservices/{k}" for k in (
    "Deployment/app-tier", "Deployment/data-tier", "Deployment/support-tier", "Service/app-tier", "Service/data-tier")}
MICROSERVICES_EDGES = {
    ("microservices/Deployment/app-tier", "microservices/Service/data-tier"),
    ("microservices/Deployment/support-tier", "microservices/Service/app-tier"),
    ("microservices/Service/app-tier", "microservices/Deployment/app-tier"),
    ("microservices/Service/data-tier", "microservices/Deployment/data-tier"),
}


@pytest.fixture(scope="module")
def dot() -> str:
    found = shutil.which("dot")
    if not found:
        pytest.fail("Graphviz's dot is not installed: `make system-deps` installs Debian's graphviz", pytrace=False)
    return found


def graph(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "depgate", "graph", *args], capture_output=True, timeout=60,
                          check=False, env=env)


def svg_graph(svg: bytes) -> tuple[set[str], dict[tuple[str, str], dict[str, str]]]:
    """The node titles of a Graphviz SVG, and each edge's (src, dst) with its path's attributes."""
    root = ElementTree.fromstring(svg)
    nodes, edges = set(), {}
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        if title is None or title.text is None:
            continue
        if g.get("class") == "node":
            nodes.add(title.text)
        elif g.get("class") == "edge":
            src, _, dst = title.text.partition("->")
            path = g.find(f"{SVG}path")
            edges[(src, dst)] = dict(path.attrib) if path is not None else {}
    return nodes, edges


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a valid PNG (png_pixels)."""
    width, height, _ = png_pixels(data)
    return width, height


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, the inflated rows) of a valid PNG: signature, every chunk's CRC, IHDR first, IEND last,
    and the IDAT stream inflating to exactly height rows of (1 + width * bytes per pixel) bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) == crc, f"bad CRC in chunk {ctype!r}"
        chunks.append(ctype)
        if ctype == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks, chunks
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    assert interlace == 0
    row = 1 + (width * channels * depth + 7) // 8
    rows = zlib.decompress(idat)
    assert len(rows) == height * row, "IDAT does not hold the rows IHDR announces"
    return width, height, rows


def test_the_microservices_example_as_svg_and_png_drawn_by_dot(dot):
    svg = graph("-f", str(EXAMPLE), "-o", "svg")
    assert svg.returncode == 0, svg.stderr.decode()
    nodes, edges = svg_graph(svg.stdout)
    assert nodes == MICROSERVICES_NODES
    assert set(edges) == MICROSERVICES_EDGES
    labels = {t.text for t in ElementTree.fromstring(svg.stdout).iter(f"{SVG}text")}
    assert {"deployment/app-tier", "service/data-tier", "data-tier,redis-ping,redis-port",
            "namespace microservices"} <= labels
    # nothing blocks in the example's files (no status): no red edge; selector edges dashed
    assert not [e for e in edges.values() if e.get("stroke") == "red"]
    assert edges[("microservices/Service/app-tier", "microservices/Deployment/app-tier")].get("stroke-dasharray")

    png = graph("-f", str(EXAMPLE), "-o", "png")
    assert png.returncode == 0, png.stderr.decode()
    width, height = png_size(png.stdout)
    assert 600 <= width <= 4000 and 60 <= height <= 1000, (width, height)  # five boxes in a row, one namespace
    # the same graph in DOT (the old --format spelling still works) and in text
    assert graph("-f", str(EXAMPLE), "--format", "dot").stdout.decode().startswith("digraph depgate {")
    assert b"deployment/support-tier (policy support-tier)" in graph("-f", str(EXAMPLE)).stdout


def test_the_readmes_picture_is_what_make_graph_picture_draws_now(dot):
    now = graph("-f", str(EXAMPLE), "-o", "svg")
    assert now.returncode == 0, now.stderr.decode()
    assert PICTURE.read_bytes() == now.stdout, (
        "docs/graph-microservices.svg is out of date: run `make graph-picture` (never edit it by hand)")


def test_the_readmes_svg_drawn_as_png_by_another_renderer_has_its_size_and_ink(tmp_path):
    rsvg = shutil.which("rsvg-convert")
    if not rsvg:
        pytest.fail("rsvg-convert is not installed: `make system-deps` installs Debian's librsvg2-bin", pytrace=False)
    out = subprocess.run([rsvg, "--dpi-x=96", "--dpi-y=96", str(PICTURE)], capture_output=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr.decode()
    width, height, rows = png_pixels(out.stdout)
    svg = ElementTree.fromstring(PICTURE.read_bytes())
    points = [float(svg.get(side, "0").removesuffix("pt")) for side in ("width", "height")]
    assert (width, height) == tuple(math.ceil(p * 96 / 72) for p in points), (width, height, points)  # 1pt = 1/72"
    # ink: the boxes, arrows and names are dark pixels on a white background, a few percent of the picture
    pixels = unfiltered(rows, width, 4)
    dark = sum(1 for i in range(0, len(pixels), 4) if pixels[i + 3] > 128 and max(pixels[i:i + 3]) < 100)
    assert 0.005 < dark / (width * height) < 0.2, f"{dark} dark pixels of {width * height}: blank or a blot"


def unfiltered(rows: bytes, width: int, bpp: int) -> bytes:
    """The pixels of inflated 8-bit PNG rows (each: a filter byte, then width * bpp bytes), PNG's five filters
    undone."""
    stride, out, prev = width * bpp, bytearray(), bytearray(width * bpp)
    for start in range(0, len(rows), stride + 1):
        kind, line = rows[start], bytearray(rows[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        out += line
        prev = line
    return bytes(out)


BLOCKED_CYCLE = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: a, namespace: shop}, spec: {selector: {app: a}}}
- {apiVersion: v1, kind: Service, metadata: {name: b, namespace: shop}, spec: {selector: {app: b}}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: a, namespace: shop}
  spec:
    selector: {matchLabels: {app: a}}
    template: {metadata: {labels: {app: a}}, spec: {containers: [{name: a, image: a}]}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: b, namespace: shop}
  spec:
    selector: {matchLabels: {app: b}}
    template: {metadata: {labels: {app: b}}, spec: {containers: [{name: b, image: b}]}}
- apiVersion: depgate.io/v1alpha1
  kind: DependencyPolicy
  metadata: {name: a, namespace: shop}
  spec: {workloadRef: {name: a}, preconditions: [{name: needs-b, service: {name: b}}]}
  status: {blocking: [needs-b]}
- apiVersion: depgate.io/v1alpha1
  kind: DependencyPolicy
  metadata: {name: b, namespace: shop}
  spec: {workloadRef: {name: b}, preconditions: [{name: needs-a, tcp: {host: a, port: 80}}]}
"""


def test_blocked_edges_are_red_and_a_cycles_orange_in_svg_and_mermaid(dot, tmp_path):
    path = tmp_path / "snapshot.yaml"  # what `kubectl get svc,deploy,dp -o yaml` prints: a List, with status
    path.write_text(BLOCKED_CYCLE)
    svg = graph("-f", str(path), "-o", "svg")
    assert svg.returncode == 0, svg.stderr.decode()
    _, edges = svg_graph(svg.stdout)
    a, b = "shop/Deployment/a", "shop/Deployment/b"
    sa, sb = "shop/Service/a", "shop/Service/b"
    assert edges[(a, sb)]["stroke"] == "red"  # blocked (status.blocking of policy a), on the cycle too
    assert {k: edges[k]["stroke"] for k in ((sb, b), (b, sa), (sa, a))} == dict.fromkeys(((sb, b), (b, sa), (sa, a)),
                                                                                        "orange")
    mermaid = graph("-f", str(path), "-o", "mermaid").stdout.decode().splitlines()
    assert mermaid[0] == "flowchart LR"
    ids = {line.split('"')[1]: line.split("[")[0].split("(")[0].strip() for line in mermaid if '"' in line
           and line.startswith("    ")}
    links = [line.strip() for line in mermaid if "->" in line]
    styles = {int(line.split()[1]): line.split()[2] for line in mermaid if line.strip().startswith("linkStyle")}
    blocked = links.index(f'{ids["deployment/a"]} -->|"needs-b"| {ids["service/b"]}')
    assert styles.pop(blocked).startswith("stroke:red")
    assert sorted(styles.values()) == ["stroke:orange,stroke-width:2px"] * 3
    assert f'{ids["service/b"]} -.-> {ids["deployment/b"]}' in links  # a selector edge: dotted
    text = graph("-f", str(path), "-n", "shop").stdout.decode()
    assert "needs-b: service/b [blocked]" in text and "cycles (pods on them cannot start from cold):" in text
    assert graph("-f", str(path), "-n", "elsewhere").stdout.decode() == "no DependencyPolicies found\n"


def test_svg_without_dot_says_what_to_install(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no dot there
    out = graph("-f", str(EXAMPLE), "-o", "svg", env=env)
    assert out.returncode == 1 and out.stdout == b""
    assert "needs Graphviz's dot on PATH (Debian: apt-get install graphviz)" in out.stderr.decode()
    assert graph("-f", str(EXAMPLE), "-o", "mermaid", env=env).returncode == 0  # text formats need no dot


def test_a_missing_file_is_an_error_not_an_empty_graph():
    out = graph("-f", str(REPO / "examples" / "no-such.yaml"))
    assert out.returncode == 1 and b"no-such.yaml" in out.stderr


def test_the_picture_is_committed_as_svg_only():
    tracked = subprocess.run(["git", "ls-files", "docs", "charts", "examples"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert not [p for p in tracked if Path(p).suffix.lower() in (".png", ".jpg", ".gif")]
