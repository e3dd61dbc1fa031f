"""`afinar serve --engine vllm`: the `vllm serve` command for GPU users (multi-LoRA, one base).

vLLM serves the base model once and each run's adapter as its own model id
(`--enable-lora --lora-modules name=path`), with the same OpenAI API as `afinar serve`. It does
not apply afinar's domain guard: put the guard in front with `afinar serve` on CPU if you need
refusals, or use the run's strict mode. Not tested here (no GPU); the command is.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from afinar.errors import AfinarError


def vllm_command(run_dirs: list[Path], host: str, port: int, api_key_env: bool) -> list[str]:
    """The argv of `vllm serve` for the runs' shared base model and their adapters."""
    from afinar.models import read_run
    from afinar.models import resolve_model_path

    recipes = [(Path(d), read_run(d)) for d in run_dirs]
    bases = {r.base_model for _, (r, _, _) in recipes}
    if len(bases) != 1:
        raise AfinarError(f"vLLM serves one base model; these runs use {', '.join(sorted(bases))}")
    first = recipes[0][1][0]
    ranks = [r.lora.r for _, (r, _, _) in recipes]
    argv = ["vllm", "serve", str(resolve_model_path(first.base_model)), "--host", host, "--port", str(port),
            "--enable-lora", "--max-lora-rank", str(max(ranks)), "--max-loras", str(len(recipes)),
            "--lora-modules", *[f"{r.name}={adapter.resolve()}" for _, (r, _, adapter) in recipes]]
    if first.quantization == "nf4":
        argv += ["--quantization", "bitsandbytes"]
    if first.trust_remote_code:
        argv.append("--trust-remote-code")
    if api_key_env:
        argv += ["--api-key", "$AFINAR_API_KEY"]  # expanded by the shell, never printed with its value
    return argv


def printable(argv: list[str]) -> str:
    return " ".join(a if a == "$AFINAR_API_KEY" else shlex.quote(a) for a in argv)
