"""The image-only baselines on 2 CPU processes (gloo), as subprocesses (Lightning-free, see ENVIRONMENT.md):

- SimCLR: the NT-Xent loss and, after DDP's averaging, the gradients equal single-process training
  on the concatenated batch (views gathered with gradients);
- MoCo v2: shuffling BN returns each rank's own keys in order (checked with the key encoder in eval
  mode, where a key depends on its image only), and every rank enqueues the same global batch.
"""

import os
import subprocess
import sys
import textwrap

from tests.losses.test_distributed import _free_port

WORKER = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist, torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from convirt.config import load_config
    from convirt.losses.ssl import NTXentLoss, nt_xent
    from convirt.methods.mocov2 import MoCoV2

    rank, world, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    net = torch.nn.Linear(10, 6).double()
    x1, x2 = torch.randn(8, 10).double(), torch.randn(8, 10).double()  # two views of a global batch of 8
    nt_xent(net(x1), net(x2), 0.2).backward()  # single-process reference, before any process group exists
    ref = [p.grad.clone() for p in net.parameters()]
    ref_loss = nt_xent(net(x1), net(x2), 0.2).item()
    for p in net.parameters():
        p.grad = None

    cfg = load_config(overrides=["image.model=test_resnet", "image.pretrained=false", "image.size=32", "method=mocov2",
                                 "ssl.queue_size=16", "data.batch_size=4", "ssl.proj_dim=8"])
    moco = MoCoV2(cfg, MoCoV2.build_model(cfg)).train()
    images = torch.randn(8, 1, 32, 32)
    moco.key_encoder.eval(), moco.key_head.eval()
    with torch.no_grad():
        ref_keys = F.normalize(moco.key_head(moco.key_encoder(images)), dim=1)

    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = slice(rank * 4, rank * 4 + 4)
    model = DDP(net)
    loss = NTXentLoss(0.2)(model(x1[rows]), model(x2[rows]))
    loss.backward()
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss)
    global_loss /= world
    grad_err = max((p.grad - r).abs().max().item() for p, r in zip(net.parameters(), ref))

    mine, everyone = moco.keys(images[rows])  # shuffled across ranks, encoded, un-shuffled
    key_err = max((mine - ref_keys[rows]).abs().max().item(), (everyone - ref_keys).abs().max().item())
    moco.enqueue(everyone)
    queues = [torch.empty_like(moco.queue) for _ in range(world)]
    dist.all_gather(queues, moco.queue)
    queue_err = max((moco.queue[:8] - ref_keys).abs().max().item(), (queues[0] - queues[1]).abs().max().item())
    moco.key_encoder.train()  # batch statistics: a shuffled rank normalises other images than its own
    shuffled, _ = moco.keys(images[rows])
    with torch.no_grad():
        local = F.normalize(moco.key_head(moco.key_encoder(images[rows])), dim=1)
    mixed = (shuffled - local).abs().max().item()
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(f"{abs(global_loss.item() - ref_loss)} {grad_err} {key_err} {queue_err} {int(moco.queue_ptr)} {mixed}")
    dist.barrier()
    os._exit(0)  # skip gloo's teardown, which sometimes aborts at interpreter exit
    """
)


def test_two_processes_equal_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path)], env=env) for r in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    for r in range(2):
        loss_err, grad_err, key_err, queue_err, ptr, mixed = map(float, (tmp_path / f"rank{r}.txt").read_text().split())
        assert loss_err < 1e-12 and grad_err < 1e-12  # SimCLR
        assert key_err < 1e-5 and queue_err < 1e-5 and ptr == 8  # MoCo: keys back in order, same queue everywhere
        assert mixed > 1e-4  # and the shuffle really mixed the ranks' images
