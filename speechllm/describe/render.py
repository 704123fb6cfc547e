"""Renderers: a clip's attribute values -> the one description text the frozen LLM reads.

- `desta2`: DeSTA2's bracket format,
  `[00:00-00:03] "Turn the lights off." (Gender: Female, Accent: British, Pitch: high, Duration: 3.1s)`.
- `natural`: a plain English sentence,
  `A woman with a British accent says, quickly and in a high voice: "Turn the lights off." The recording
  is 3.1 seconds long.`

How each attribute renders is in its YAML under `render:`:
- `tag`: the DeSTA2 key (e.g. `Gender`); `value`: a format string over the clip's columns (default
  `{<name>}`, the word); `capitalize`: capitalise the value.
- `natural.slot`: where the attribute goes in the sentence: `noun` (who speaks: woman/man), `adjective`
  (before the noun: young), `with` ("with a British accent"), `manner` (how they speak: quickly,
  in a high voice), `speech` (the quoted words), `sentence` (an extra sentence about the recording);
  `natural.phrases`: word -> phrase; `natural.template`: a format string used for words without a phrase.
Attributes whose word is "" (unknown for this clip) are left out; a clip with no voiced speech (noise, a
hum) says so: `(No voice, Volume: loud, ...)` and "No voice is heard in the recording.".
"""

from __future__ import annotations

from collections.abc import Callable

Renderer = Callable[[dict, list[str], dict[str, dict]], str]
NO_VOICE = "_no_voice"  # set in a clip's values (not a column) when it holds no voiced speech
NO_VOICE_CLAUSE = "No voice is heard in the recording"
RENDERERS: dict[str, Renderer] = {}


def register_renderer(name: str) -> Callable[[Renderer], Renderer]:
    """Register a renderer `(values, attributes, configs) -> text` under `name`."""

    def decorator(fn: Renderer) -> Renderer:
        RENDERERS[name] = fn
        return fn

    return decorator


def render(renderer: str, values: dict, attributes: list[str], configs: dict[str, dict]) -> str:
    """Render one clip's description.

    Args:
        renderer: a name in `RENDERERS` (`desta2`, `natural`).
        values: the clip's columns (attribute words and measurements, e.g. `pitch`, `pitch_hz`).
        attributes: the attributes to mention, in order.
        configs: name -> attribute config (its `render:` section is used).

    Returns:
        The description text.
    """
    if renderer not in RENDERERS:
        raise KeyError(f"unknown renderer {renderer!r}; choose one of {sorted(RENDERERS)}")
    return RENDERERS[renderer](values, attributes, configs)


def known(name: str, values: dict) -> bool:
    """Whether the clip has a value for this attribute (not missing, empty or NaN)."""
    value = values.get(name)
    return value not in (None, "") and not (isinstance(value, float) and value != value)


def _timestamp(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def _tagged(values: dict, attributes: list[str], configs: dict[str, dict]) -> list[tuple[str | None, str]]:
    """(tag, value text) per known attribute, in order; the spoken words come as (None, words)."""
    out: list[tuple[str | None, str]] = []
    for name in attributes:
        if not known(name, values):
            continue
        spec = configs[name].get("render", {})
        if spec.get("natural", {}).get("slot") == "speech":
            out.append((None, str(values[name])))
            continue
        text = spec.get("value", "{" + name + "}").format(**values)
        if spec.get("capitalize"):
            text = text[:1].upper() + text[1:]
        out.append((spec.get("tag", name.replace("_", " ").title()), text))
    return out


@register_renderer("desta2")
def render_desta2(values: dict, attributes: list[str], configs: dict[str, dict]) -> str:
    """`[00:00-00:03] "text" (Tag: value, ...)`, the format DeSTA2 trains with."""
    parts = [f"[00:00-{_timestamp(values.get('duration') or 0.0)}]"]
    tagged = _tagged(values, attributes, configs)
    parts += [f'"{text}"' for tag, text in tagged if tag is None]
    tags = ["No voice"] * bool(values.get(NO_VOICE)) + [f"{tag}: {text}" for tag, text in tagged if tag is not None]
    if tags:
        parts.append("(" + ", ".join(tags) + ")")
    return " ".join(parts)


def _phrase(name: str, values: dict, spec: dict) -> str:
    natural = spec.get("natural", {})
    word = str(values[name])
    if word in natural.get("phrases", {}):
        return natural["phrases"][word]
    return natural.get("template", "{" + name + "}").format(**values)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


@register_renderer("natural")
def render_natural(values: dict, attributes: list[str], configs: dict[str, dict]) -> str:
    """One English sentence about who speaks and how, the quoted words, then facts about the recording."""
    slots: dict[str, list[str]] = {}
    for name in attributes:
        if not known(name, values):
            continue
        spec = configs[name].get("render", {})
        slot = spec.get("natural", {}).get("slot", "sentence")
        slots.setdefault(slot, []).append(values[name] if slot == "speech" else _phrase(name, values, spec))

    noun = slots.get("noun", ["speaker"])[0]
    subject = " ".join([*slots.get("adjective", []), noun])
    article = "An" if subject[:1].lower() in "aeiou" else "A"
    text = f"{article} {subject}"
    if slots.get("with"):
        text += " with " + _join(slots["with"])
    speech = slots.get("speech")
    text += " says" if speech else " speaks"
    if slots.get("manner"):
        text += ", " + _join(slots["manner"])
    text += f': "{speech[0]}"' if speech else "."
    if values.get(NO_VOICE):  # no speaker to describe: say so, and keep how the sound is (its volume)
        manner = f"; the sound plays {_join(slots['manner'])}" if slots.get("manner") else ""
        text = f"{NO_VOICE_CLAUSE}{manner}." if not speech else f"{text} {NO_VOICE_CLAUSE}."
    return " ".join([text, *slots.get("sentence", [])])


@register_renderer("sentences")
def render_sentences(values: dict, attributes: list[str], configs: dict[str, dict]) -> str:
    """One short sentence per attribute, `The <tag> is <value>.` ("The gender is Male. The accent is
    Scottish."), the spoken words in their own sentence. Read by SmolLM2-135M in place of the audio, on 40
    demo clips: accent 0.88 vs 0.65 from the natural sentence, but gender 0.62 vs 0.72 and pitch 0.40 vs 0.68."""
    sentences = [
        f'The speaker says: "{text}"' if tag is None else f"The {tag.lower()} is {text}."
        for tag, text in _tagged(values, attributes, configs)
    ]
    return " ".join([f"{NO_VOICE_CLAUSE}."] * bool(values.get(NO_VOICE)) + sentences)
