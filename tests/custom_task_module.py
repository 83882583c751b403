"""A research user's own task and reward, in a module of their own (not the library).

tests/test_extending.py names them in an experiment file as "custom_task_module:make_task" and
"custom_task_module:short_answer"; nothing in grpo_jax is edited to add them.
"""
from grpo_jax import tasks
from grpo_jax.tasks import Example


def make_task(config) -> tasks.Task:
    """Two-digit subtraction: held out are the problems whose first operand ends in 7."""
    problems = [Example(f"What is {a}-{b}?", str(a - b), {"id": f"sub/{a}/{b}"})
                for a in range(10, 100) for b in range(1, 10)]
    held_out = [e for e in problems if e.prompt.split()[2].split("-")[0].endswith("7")]
    return tasks.records_task(config, problems, held_out)


def short_answer(completion: str, example) -> float:
    """Shaping: 1 for a completion of at most 16 characters."""
    return 1.0 if len(completion) <= 16 else 0.0
