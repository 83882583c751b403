"""Prompt and SFT-target text for the three answer styles the verifiers understand.

- "reasoning": the GRPO seeds' format, `<reasoning>…</reasoning><answer>…</answer>`.
- "think": DeepSeek-R1-Zero's template, `<think>…</think> <answer>…</answer>`.
- "plain": free text ending in `\\boxed{answer}` (Qwen2.5-Math's CoT instruction).
- "final": free text whose last number is the answer (how a pretrained chat model answers unprompted).

`format_prompt` gives one string (for base models / no chat template); `format_messages` gives chat
messages (instruction as the system message) for the tokenizer's chat template, applied elsewhere.
`format_target` builds the completion an SFT warm start trains on; by construction
`rewards.format_reward(format_target(r, a, style=s), style=s) == 1.0` and
`rewards.extract_answer(...) == a` for any non-blank reasoning r and answer a free of tag text.
"""
from __future__ import annotations

from grpo_jax.rewards import STYLES  # the answer styles the verifiers understand

REASONING_INSTRUCTION = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)
THINK_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)
PLAIN_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
FINAL_INSTRUCTION = "Give the final answer as a number at the end."


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def format_messages(question: str, *, style: str) -> list[dict[str, str]]:
    """Chat messages: the style's instruction as system message (none for "plain" and "final", whose
    instruction follows the question in the user message, as Qwen2.5-Math does)."""
    _check_style(style)
    if style in ("plain", "final"):
        instruction = PLAIN_INSTRUCTION if style == "plain" else FINAL_INSTRUCTION
        return [{"role": "user", "content": f"{question}\n{instruction}"}]
    instruction = REASONING_INSTRUCTION if style == "reasoning" else THINK_INSTRUCTION
    return [{"role": "system", "content": instruction}, {"role": "user", "content": question}]


def format_prompt(question: str, *, style: str) -> str:
    """One prompt string for models without a chat template.

    "think" is R1-Zero's exact template ("... User: {question}\\nAssistant:"); the other styles put
    the instruction and the question in the order `format_messages` does, separated by a blank line.
    """
    _check_style(style)
    if style == "think":
        return f"{THINK_INSTRUCTION} User: {question}\nAssistant:"
    if style == "plain":
        return f"{question}\n{PLAIN_INSTRUCTION}"
    if style == "final":
        return f"{question}\n{FINAL_INSTRUCTION}"
    return f"{REASONING_INSTRUCTION}\n\n{question}"


def format_target(reasoning: str, answer: str, *, style: str) -> str:
    """The ideal completion for SFT, e.g. for arithmetic ("12+35=47", "47"), style "reasoning":
    "<reasoning>\\n12+35=47\\n</reasoning>\\n<answer>\\n47\\n</answer>"."""
    _check_style(style)
    if style == "reasoning":
        return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"
    if style == "think":
        return f"<think>\n{reasoning}\n</think>\n<answer>\n{answer}\n</answer>"
    if style == "final":
        return f"{reasoning}\nThe answer is {answer}."
    return f"{reasoning}\nThe final answer is \\boxed{{{answer}}}."
