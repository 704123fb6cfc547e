"""Training targets written by the frozen text LLM (DeSTA2 self-output) and the comparison modes.

The frozen text LLM reads a clip's text description plus an instruction and answers; the answer
becomes the speech model's training target. :func:`description_messages` is the single place that
defines what the text LLM reads, shared by target generation, token filtering, the evaluation
ceiling and distillation.
"""

from __future__ import annotations

# The LLM never hears the audio: it reads a description. The system turn asks it to answer as a
# listener would, so targets read like perception ("A woman says ...") rather than commentary on a
# text ("The description says ..."), which the speech model could not ground in audio.
DEFAULT_SYSTEM = (
    "You are a helpful assistant that can hear audio. The user's audio is given to you as a "
    "description in brackets. Answer as if you heard the audio yourself, briefly, without "
    "mentioning the description."
)


def description_messages(description: str, instruction: str, system: str | None = None) -> list[dict]:
    """The chat the frozen text LLM reads for one clip.

    Args:
        description: the clip's description text (from the describe stage).
        instruction: the request about the audio.
        system: system prompt; None uses :data:`DEFAULT_SYSTEM`, "" sends no system turn (the
            chat template may then insert its own default).

    Returns:
        A list of ``{"role", "content"}`` messages, ready for ``tokenizer.apply_chat_template``.

    Raises:
        ValueError: empty description or instruction.
    """
    if not isinstance(description, str) or not description.strip():
        raise ValueError("description_messages: the description is empty")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("description_messages: the instruction is empty")
    system = DEFAULT_SYSTEM if system is None else system
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"[Audio: {description.strip()}]\n\n{instruction.strip()}"})
    return messages
