"""doctor: the versions, devices and thread settings a bug report needs."""

from __future__ import annotations

import click

from .common import emit, handle_errors, json_option, quiet_option


def _text(r: dict) -> str:
    t, o, trt, th = r["torch"], r["onnxruntime"], r["tensorrt"], r["threads"]
    packages = ", ".join(f"{k} {v}" for k, v in r["packages"].items() if v is not None)
    missing = ", ".join(k for k, v in r["packages"].items() if v is None)
    lines = [
        f"repdeploy   {r['repdeploy']}",
        f"python      {r['python']}",
        f"os          {r['os']}",
        f"cpu         {r['cpu']}",
        f"packages    {packages}",
        f"not found   {missing or '-'}",
        f"torch       {t['build']}; CUDA available: {'yes' if t['cuda_available'] else 'no'}"
        + (f" ({', '.join(t['gpus'])})" if t["gpus"] else ""),
        "onnxruntime " + (f"providers {', '.join(o['providers'])}" if "providers" in o else o["error"]),
        "tensorrt    " + (f"usable, {trt['version']}" if trt["usable"] else f"not usable: {trt['reason']}"),
        f"threads     {th['logical_cpus']} logical CPUs, {th['usable_cpus']} usable, "
        f"{th['physical_cores']} physical cores; torch {t['threads']} intra-op / {t['interop_threads']} inter-op; "
        f"ORT default {th['onnxruntime_default_intra_op']}",
        "env         " + ", ".join(f"{k}={v}" for k, v in th["environment"].items() if v is not None)
        if any(v is not None for v in th["environment"].values()) else "env         no thread variables set",
    ]
    for dist, error in r["import_errors"].items():
        lines.append(f"broken      {dist}: {error}")
    return "\n".join(lines)


@click.command("doctor")
@json_option
@quiet_option
@handle_errors
def doctor_cmd(as_json):
    """Print versions, devices, TensorRT/CUDA availability and thread settings, for a bug report.

    \b
    Examples:
      repdeploy doctor
      repdeploy doctor --json-out doctor.json
    """
    from ..doctor import report

    emit(report(), as_json, _text)


COMMANDS = [doctor_cmd]
