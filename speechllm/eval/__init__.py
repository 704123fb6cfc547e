"""Evaluation: unseen speech instructions, the text-LLM ceiling, the untrained baseline, retention.

Modules: `parsing` (answers -> labels, WER), `tasks` (tasks and unseen questions), `retention` (format
constraints, text-only drift), `generation` (batched text-LLM generation), `runner` (the evaluation),
`report` (report.json/.md and plots), `plane` (learning-vs-forgetting plane across runs).
"""
