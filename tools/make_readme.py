"""README.md from nbs/index.ipynb (nbdev-readme needs Quarto, which is not installed here).
Markdown cells verbatim; code cells as ```python blocks, their text outputs as ``` blocks.
Usage: python tools/make_readme.py [--check]"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def render(nb_path=ROOT/"nbs"/"index.ipynb") -> str:
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"]).rstrip()
        if not src or src.startswith("#| hide"): continue
        if c["cell_type"] == "markdown": parts.append(src); continue
        src = "\n".join(l for l in src.splitlines() if not l.startswith("#|"))
        parts.append(f"```python\n{src}\n```")
        for o in c.get("outputs", []):
            text = o.get("text") or o.get("data", {}).get("text/plain")
            if text:
                # progress bars redraw with carriage returns: keep what a terminal would show last on each line
                text = "\n".join(l.split("\r")[-1] for l in "".join(text).split("\n"))
                text = "\n".join(l for l in text.splitlines() if l.strip())
                if text: parts.append("```\n" + text.rstrip() + "\n```")
    return "<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook -->\n\n" + "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if (ROOT/"README.md").read_text() == text else "README.md is out of date: run python tools/make_readme.py")
    (ROOT/"README.md").write_text(text)
