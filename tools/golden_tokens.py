#!/usr/bin/env python3
"""Golden CLIP token ids and prompt-cut results -> golden/clip_tokens.json.

Reference: transformers' *slow* (pure Python) CLIPTokenizer, as diffusers'
StableDiffusionPipeline calls it (padding="max_length", max_length=77,
truncation=True), loaded from models/tiny/tokenizer, WITHOUT ftfy: the
tokenizer then normalizes text with its BasicTokenizer fallback
(BasicTokenizer(strip_accents=False, do_split_on_punc=False)): control and
format characters removed, whitespace collapsed, spaces around CJK ideographs,
NFC, lowercase; then OpenAI CLIP's regex and byte-level BPE.

transformers 5 dropped the slow class (its CLIPTokenizer is the `tokenizers`
backed one, which differs for CJK and control/format characters), so this
script runs in its own small venv with transformers 4.57.x; see
tools/README.md:

  python3 -m venv tools/.work/venv-tok
  tools/.work/venv-tok/bin/pip install -r tools/requirements-tokens.txt
  tools/.work/venv-tok/bin/python tools/golden_tokens.py

The "cut_cases" implement the thesis' rule for prompts longer than 300
characters (seeds/000_ea3ef23903277270.txt, script line 30-39), verbatim:

  def cut_prompt(prompt, max_len=300, delimiter=','):
      if len(prompt) <= max_len:
          return prompt
      idx = prompt[:max_len].rfind(delimiter)
      # catch if delimiter isn't used
      if idx <= 0:
          idx = prompt[:max_len].rfind(' ')
      return prompt[:idx]

Lengths and indices are Python string positions, i.e. Unicode code points
(not bytes, not UTF-16 units, not grapheme clusters).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Guarantee the BasicTokenizer fallback even if ftfy happens to be installed.
sys.modules["ftfy"] = None  # type: ignore[assignment]

import transformers  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "models" / "tiny" / "tokenizer"
OUT = ROOT / "golden" / "clip_tokens.json"

MAX_LEN = 300


def cut_prompt(prompt: str, max_len: int = MAX_LEN, delimiter: str = ",") -> str:
    """The thesis' cut rule, verbatim (see module docstring)."""
    if len(prompt) <= max_len:
        return prompt
    idx = prompt[:max_len].rfind(delimiter)
    # catch if delimiter isn't used
    if idx <= 0:
        idx = prompt[:max_len].rfind(" ")
    return prompt[:idx]


LEXICA_1 = (
    "a highly detailed matte painting of a futuristic city floating in the clouds, by greg rutkowski "
    "and alphonse mucha, trending on artstation, octane render, 8 k, unreal engine, volumetric lighting, "
    "cinematic, sharp focus, intricate, elegant, digital art, concept art, smooth, illustration, "
    "hyperrealistic, ultra detailed, art by artgerm and wlop and ross tran, golden hour, god rays"
)
LEXICA_2 = (
    "portrait of a beautiful elven queen with long flowing silver hair, ethereal, dreamy, soft lighting, "
    "bokeh, 85mm, f/1.8, photorealistic, by annie leibovitz and steve mccurry, national geographic, "
    "award winning photograph, highly detailed face, intricate crown of thorns and roses, fantasy, "
    "d&d, dungeons and dragons, magic the gathering art, by wlop, by artgerm, by charlie bowater"
)
LEXICA_3 = (
    "((masterpiece)), (best quality:1.2), 1girl, solo, looking at viewer, blue eyes, white hair, "
    "(detailed background:1.1), [lowres], cherry blossoms, kimono, night sky, lanterns, "
    "<lora:some_style:0.8>, {{{ultra-detailed}}}, highres, absurdres, 4K, HDR"
)
NO_COMMA_LONG = (
    "an enormous ancient library carved into the side of a mountain with thousands of glowing books "
    "floating in the air while tiny robed scholars climb impossibly tall spiral staircases toward a "
    "stained glass dome that filters the light of two suns into rainbow beams across the marble floor "
    "as a sleepy dragon curls around the central reading desk guarding a single candle"
)
COMMA_AFTER_300 = (
    "x" * 10 + " " + "the quick brown fox jumps over the lazy dog " * 7 + "and then some more words here"
    + ", finally a comma after position three hundred, and another one"
)
CJK_LONG = "一只可爱的小猫坐在窗台上看着外面的雨，" * 18  # fullwidth comma U+FF0C, not ','
EMOJI_LONG = "🐱" * 150 + ", " + "🐶" * 200  # 1 code point per emoji; ',' at index 150
ZWJ_LONG = "👨‍👩‍👧‍👦 " * 70  # 7 code points + space per family; no commas

IMAGE_PROMPTS = [
    # must match tools/golden_images.py CASES
    "a photo of an astronaut riding a horse on mars",
    "a cozy cabin in the snowy woods, oil painting, by greg rutkowski",
    "portrait of a cat wearing a tiny hat, highly detailed, artstation",
    "a red apple on a wooden table",
    "cyberpunk city at night, neon lights, rain, 4k",
    "",
    "a watercolor painting of a lighthouse",
    "an isometric voxel castle, trending on artstation",
    "a bowl of soup that is also a portal to another dimension",
]

PROMPTS = IMAGE_PROMPTS + [
    # basics / case / whitespace
    "a photo of an astronaut riding a horse",
    "A Photo Of An ASTRONAUT Riding A HoRsE",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand   multiple    spaces",
    " ",
    "\n\t \r\n",
    "a\u00a0non-breaking\u2003em space\u3000ideographic space",
    # punctuation
    "hello,world,,,,,,,,this,has,many,commas,,,",
    "!!!???...;;;:::---___***",
    "wow!!! really?!?! (masterpiece:1.2), [[best quality]], {detailed} <lora:x:0.5>",
    "hyphenated-words and snake_case and CamelCase, e-mail@example.com https://example.com/path?x=1&y=2#frag",
    "quotes \u201csmart\u201d \u00abguillemets\u00bb \u2014 em dash \u2013 en dash \u2026 ellipsis",
    "'''triple''' \"double\" `back` ~tilde~ ^caret^ |pipe| \\backslash\\ /slash/",
    # numbers
    "numbers 1234567890 3.14159 1,000,000 -42 +7 2nd 3rd 4th 1920x1080 8k 4K",
    "x\u00b2 + y\u00b3, \u00bd cup, \u2167 roman, \u0661\u0662\u0663 arabic-indic digits, \uff11\uff12\uff13 fullwidth",
    # contractions
    "it's the cat's toy, don't, you're, we've, I'm, they'll, he'd",
    "IT'S DON'T YOU'RE WE'VE I'M THEY'LL HE'D",
    "rock'n'roll o'clock 'tis ''quoted'' 's 't 're",
    "don\u2019t it\u2019s (curly apostrophes)",
    # accents, NFC/NFD, case mapping
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade, \u00c5ngstr\u00f6m, S\u00e3o Paulo, Z\u00fcrich",
    "cafe\u0301 cre\u0300me (decomposed accents)",
    "STRASSE Stra\u00dfe \u1e9e \u0130stanbul \u0130I\u0131i",
    "\u039f\u0394\u039f\u03a3 \u03a3\u039f\u03a6\u0399\u0391\u03a3, \u0391\u03b8\u03ae\u03bd\u03b1",
    "\ufb01ne \ufb02ower ligatures, \uff21\uff22\uff23 fullwidth latin",
    # CJK and other scripts
    "\u4e00\u53ea\u732b\u5750\u5728\u684c\u5b50\u4e0a",
    "a cat \u732b in tokyo \u6771\u4eac, shibuya crossing",
    "\u5bcc\u58eb\u5c71\u306e\u7f8e\u3057\u3044\u98a8\u666f\u3001\u6d6e\u4e16\u7d75\u3001\u30ab\u30bf\u30ab\u30ca",
    "\uc544\ub984\ub2e4\uc6b4 \ud48d\uacbd, \ud55c\uad6d\uc5b4",
    "\u041a\u0440\u0430\u0441\u0438\u0432\u044b\u0439 \u043f\u0435\u0439\u0437\u0430\u0436 \u0441 \u0433\u043e\u0440\u0430\u043c\u0438 \u0438 \u043e\u0437\u0435\u0440\u043e\u043c, \u0401\u0436",
    "\u0645\u0646\u0638\u0631 \u0637\u0628\u064a\u0639\u064a \u062c\u0645\u064a\u0644 \u0641\u064a \u0627\u0644\u0635\u062d\u0631\u0627\u0621",
    "\u05e0\u05d5\u05e3 \u05d9\u05e4\u05d4, \u0938\u0941\u0902\u0926\u0930 \u092a\u0930\u093f\u0926\u0943\u0936\u094d\u092f, \u0e20\u0e32\u0e1e\u0e17\u0e34\u0e27\u0e17\u0e31\u0e28\u0e19\u0e4c",
    # emoji
    "a dog \U0001f436 with sunglasses \U0001f60e\U0001f525\U0001f525",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 flag \U0001f1e9\U0001f1ea thumbs \U0001f44d\U0001f3fd heart \u2764\ufe0f",
    # control / format characters (removed by BasicTokenizer's _clean_text)
    "zero\u200bwidth space, soft\u00adhyphen, joiner\u200d, bom\ufeff",
    "bell\x07 null\x00 escape\x1b[0m replacement\ufffd",
    # special-token text inside a prompt
    "<|startoftext|>hello <|endoftext|> world",
    # long words / long prompts
    "a" * 400,
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    LEXICA_1,
    LEXICA_2,
    LEXICA_3,
    NO_COMMA_LONG,
    COMMA_AFTER_300,
    CJK_LONG,
    EMOJI_LONG,
    ZWJ_LONG,
    " ".join(["cat"] * 80),
    ", ".join(["red", "green", "blue"] * 30),
    # realistic short SD prompts
    "a beautiful landscape painting of a mountain lake at sunrise, by albert bierstadt, hudson river school",
    "studio ghibli style, a girl and her robot walking through a field of sunflowers, warm colors",
    "photo of a vintage car, kodak portra 400, 35mm film grain, f/2.8, golden hour",
    "low poly 3d render of a fox, blender, isometric, pastel colors, trending on behance",
]


def cut_edge_prompts() -> list[str]:
    a299 = "b" * 299
    return [
        "x" * 300,                            # exactly 300: unchanged
        "x" * 301,                            # no comma, no space: rfind -> -1 -> prompt[:-1] (!)
        "y" * 150 + " " + "z" * 200,          # no comma: cut at the space
        "," + "w" * 350,                      # only comma at index 0 -> space fallback -> -1 -> [:-1]
        "," + "w" * 100 + " " + "w" * 250,    # comma at 0 ignored, cut at the space
        " " + "v" * 350,                      # space at index 0 -> "" (empty result)
        a299 + "," + "c" * 50,                # comma at index 299 (last char of the window)
        a299 + " " + "c" * 50,                # space at 299
        "b" * 300 + "," + "c" * 50,           # comma at index 300: outside the window
        "one, two, three " + "q" * 290,       # cut at the last comma, keeps "one, two"
        "alpha ,beta ," + "r" * 300,          # text before comma keeps its trailing space
        "\u00e9" * 200 + ", " + "\u00e8" * 200,   # 1 code point each (2 UTF-8 bytes)
        "e\u0301" * 160 + ", tail",           # NFD: 2 code points per visible char
        "\U0001f600" * 120 + "," + "\U0001f600" * 200,  # astral: 1 code point, 2 UTF-16 units
        "\u732b" * 100 + "\uff0c" + "\u732b" * 250,     # fullwidth comma is not ','
        "tab\tseparated\t" * 30,              # tabs are not ' ': no space fallback hit
        "line one,\nline two " * 20,
    ]


def main() -> None:
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        sys.exit(f"transformers {transformers.__version__} has no slow CLIPTokenizer; "
                 "run this with tools/.work/venv-tok (see tools/README.md)")
    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    assert type(tok).__name__ == "CLIPTokenizer"
    assert tok.fix_text is None, "ftfy is active; the golden needs the BasicTokenizer fallback"
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok.pad_token == "<|endoftext|>" and tok.model_max_length == 77

    prompts: list[str] = []
    for p in PROMPTS + [cut_prompt(p) for p in PROMPTS if len(p) > MAX_LEN]:
        if p not in prompts:
            prompts.append(p)
    assert len(prompts) >= 60, len(prompts)

    cases = []
    for p in prompts:
        ids = tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        assert len(ids) == 77 and ids[0] == 49406
        cases.append({"prompt": p, "input_ids": ids})

    cut_cases = []
    for p in prompts + cut_edge_prompts():
        if any(c["prompt"] == p for c in cut_cases):
            continue
        cut_cases.append({"prompt": p, "cut": cut_prompt(p)})

    doc = {
        "tokenizer": f"transformers.CLIPTokenizer {transformers.__version__}",
        "notes": [
            "Slow (pure Python) CLIPTokenizer without ftfy, i.e. with its BasicTokenizer fallback; "
            "called as diffusers' StableDiffusionPipeline does: padding='max_length', max_length=77, "
            "truncation=True. Tokenizer files: models/tiny/tokenizer.",
            "cut_cases: the thesis' cut_prompt(prompt, max_len=300, delimiter=','): if len(prompt) <= 300 "
            "unchanged; else idx = prompt[:300].rfind(','); if idx <= 0: idx = prompt[:300].rfind(' '); "
            "result prompt[:idx] (so idx == -1 drops only the last character of the whole prompt).",
            "All lengths and indices are in Unicode code points (Python str), not bytes or UTF-16 units.",
        ],
        "cases": cases,
        "cut_cases": cut_cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # One case per line (readable diffs), UTF-8 (ensure_ascii=False).
    dump = lambda o: json.dumps(o, ensure_ascii=False, separators=(", ", ": "))  # noqa: E731
    lines = ["{"]
    for key in ("tokenizer", "notes"):
        lines.append(f" {dump(key)}: {dump(doc[key])},")
    for key in ("cases", "cut_cases"):
        lines.append(f" {dump(key)}: [")
        lines.append(",\n".join("  " + dump(c) for c in doc[key]))
        lines.append(" ]," if key == "cases" else " ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == doc
    OUT.write_text(text, encoding="utf-8", newline="\n")
    long = sum(1 for c in cases if c["input_ids"][76] != 49407 or 49407 not in c["input_ids"][1:76])
    changed = sum(1 for c in cut_cases if c["cut"] != c["prompt"])
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} token cases ({long} truncated at 77), "
          f"{len(cut_cases)} cut cases ({changed} cut)")


if __name__ == "__main__":
    main()
