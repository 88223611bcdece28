"""Distributed ConVIRT loss on 2 CPU processes (gloo) equals single-process training on the
concatenated batch: same loss, same parameter gradients after DDP's averaging."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from convirt.losses import ContrastiveLoss, bidirectional_nce

    rank, world, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    image_net, text_net = torch.nn.Linear(10, 6).double(), torch.nn.Linear(12, 6).double()
    x_img, x_txt = torch.randn(8, 10).double(), torch.randn(8, 12).double()  # global batch

    # single-process reference on the concatenated batch (before any process group exists)
    bidirectional_nce(image_net(x_img), text_net(x_txt), 0.1, 0.75).backward()
    ref = [p.grad.clone() for p in [*image_net.parameters(), *text_net.parameters()]]
    ref_loss = bidirectional_nce(image_net(x_img), text_net(x_txt), 0.1, 0.75).item()
    for p in [*image_net.parameters(), *text_net.parameters()]:
        p.grad = None

    dist.init_process_group("gloo", rank=rank, world_size=world)
    img, txt = DDP(image_net), DDP(text_net)
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    loss = ContrastiveLoss(0.1, 0.75)(img(x_img[rows]), txt(x_txt[rows]))
    loss.backward()
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss)
    global_loss /= world
    got = [p.grad for p in [*image_net.parameters(), *text_net.parameters()]]
    err = max((a - b).abs().max().item() for a, b in zip(got, ref))
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(f"{abs(global_loss.item() - ref_loss)} {err}")
    dist.barrier()
    os._exit(0)  # skip gloo's teardown, which sometimes aborts at interpreter exit
    """
)


@pytest.mark.parametrize("world", [2])
def test_two_process_loss_and_gradients_equal_single_process(tmp_path, world):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r), str(world), str(tmp_path)], env=env)
        for r in range(world)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    for r in range(world):
        loss_err, grad_err = map(float, (tmp_path / f"rank{r}.txt").read_text().split())
        assert loss_err < 1e-12
        assert grad_err < 1e-12
