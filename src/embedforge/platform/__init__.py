"""``embedforge platform``: NVIDIA's NeMo Microservices embedding workflow over HTTP, on one machine.

The data store (huggingface_hub-compatible), entity store, customizer, deployments, a NIM-style gateway
and the evaluator answer on one port; jobs run the same stage functions the CLI runs, in worker
processes, and the database is the source of truth.
"""
