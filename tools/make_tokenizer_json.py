"""Writes tests/fixtures/tokenizer_json/: the tiny model's CLIP tokenizer saved by
transformers 5 (`CLIPTokenizer.save_pretrained`), i.e. as a single tokenizer.json,
the other way exports ship a tokenizer. tests/clip_tokenizer.rs checks that tomex
gives the same ids from it as from vocab.json + merges.txt.

    tools/.venv/bin/python tools/make_tokenizer_json.py
"""
import pathlib
import shutil

from transformers import CLIPTokenizer

root = pathlib.Path(__file__).resolve().parent.parent
out = root / "tests/fixtures/tokenizer_json"
shutil.rmtree(out, ignore_errors=True)
tok = CLIPTokenizer.from_pretrained(root / "models/tiny/tokenizer")
tok.save_pretrained(out)
for extra in ["vocab.json", "merges.txt", "chat_template.jinja"]:
    (out / extra).unlink(missing_ok=True)
print(sorted(p.name for p in out.iterdir()))
