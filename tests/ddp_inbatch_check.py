"""Run under `torchrun --nproc-per-node 2`: gathered in-batch negatives equal the single-process loss.

Every rank builds the same seeded global batch of query/passage embeddings and keeps its own rows. The
gathered ``InBatchNegativesLoss`` (gloo all-gather) averaged over ranks must equal the loss of one process on
the whole batch, and so must the gradients (each rank's gradients / world size, as DDP averages them). One
passage is duplicated across ranks (rank 1's first positive is also rank 0's first negative), which only the
cross-process false-negative mask can catch. Rank 0 prints one JSON line with the measured differences.
"""

import json

import torch
import torch.distributed as dist

from embedforge.finetune.inbatch import InBatchNegativesLoss, text_key


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local, dim, columns = 3, 8, 3  # rows per rank, embedding size, passage columns (positive + 2 negatives)
    rows = local * world
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(rows, dim, generator=gen)
    docs = [torch.randn(rows, dim, generator=gen) for _ in range(columns)]
    docs[0] = queries + 0.3 * docs[0]  # positives close to their queries: a loss well below chance
    texts = [[f"p{col}-{row}" for col in range(columns)] for row in range(rows)]
    texts[0][1] = texts[local][0]  # rank 0's first hard negative is rank 1's first positive
    docs[1][0] = docs[0][local]
    ids = torch.tensor([[text_key(f"q{row}"), *(text_key(t) for t in texts[row])] for row in range(rows)])

    def reference(with_ids: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        q = queries.clone().requires_grad_()
        d = [x.clone().requires_grad_() for x in docs]
        loss = InBatchNegativesLoss(None, scale=20.0).compute_loss_from_embeddings(
            [q, *d], ids if with_ids else None
        )
        loss.backward()
        return loss.detach(), q.grad, [x.grad for x in d]

    mine = slice(rank * local, (rank + 1) * local)
    q = queries[mine].clone().requires_grad_()
    d = [x[mine].clone().requires_grad_() for x in docs]
    loss = InBatchNegativesLoss(None, scale=20.0, gather_across_devices=True).compute_loss_from_embeddings(
        [q, *d], ids[mine]
    )
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    ref_loss, ref_q, ref_d = reference(with_ids=True)
    unmasked_loss, _, _ = reference(with_ids=False)
    grad_diff = max(
        float((q.grad / world - ref_q[mine]).abs().max()),
        *(float((g.grad / world - r[mine]).abs().max()) for g, r in zip(d, ref_d, strict=True)),
    )
    grad_diff_t = torch.tensor(grad_diff)
    dist.all_reduce(grad_diff_t, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(
            json.dumps(
                {
                    "world_size": world,
                    "backend": dist.get_backend(),
                    "gathered_loss": float(mean_loss),
                    "single_process_loss": float(ref_loss),
                    "unmasked_loss": float(unmasked_loss),
                    "max_grad_diff": float(grad_diff_t),
                }
            ),
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
