"""Distributed training the way RecBole does it, on a CPU (gloo) as well as on GPUs (nccl).

RecBole 1.2.1 starts ``torch.distributed`` inside ``Config`` when ``local_rank`` is set (the
runner's ``--nproc`` / ``--world_size`` / ``--ip`` / ``--port`` / ``--group_offset``), and its
trainer wraps the model in ``DistributedDataParallel``. Both assume CUDA: ``Config`` always asks
for the ``nccl`` backend and a ``cuda:<local_rank>`` device, and the trainer passes
``device_ids=[local_rank]`` (which ``DistributedDataParallel`` rejects for a CPU module) and
converts BatchNorm to ``SyncBatchNorm`` (CUDA only). This module keeps RecBole's flow and fixes
only the device choice:

* :class:`Config` - RecBole's ``Config`` whose ``_init_device`` picks ``nccl`` + ``cuda:<rank>``
  when a GPU is usable and ``gloo`` + CPU otherwise, and does not start the process group twice;
* :func:`ddp_trainer_init` - RecBole's ``AbstractTrainer.__init__`` with the same choice
  (installed by :mod:`recbole_cela.compat`);
* small helpers (rank, barrier, broadcast, gather) that are no-ops in a single process.
"""

import os

import torch
import torch.distributed as dist
from recbole.config import Config as RecBoleConfig

from recbole_cela.utils import PluginConfigError


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    """True in the process that writes artifacts (global rank 0, or the only process)."""
    return rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src=0):
    """``obj`` of rank ``src`` on every rank (the object itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values):
    """Element-wise sum over ranks of a list of floats (the list itself in a single process)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def use_cuda(config_dict):
    gpu_id = str(config_dict.get("gpu_id", ""))
    return bool(config_dict.get("use_gpu", True)) and len(gpu_id) > 0 and torch.cuda.is_available()


class Config(RecBoleConfig):
    """RecBole's ``Config``; in a distributed run the backend follows the device (nccl/gloo)."""

    def _init_device(self):
        final = self.final_config_dict
        if "local_rank" not in final:
            return super()._init_device()
        if isinstance(final["gpu_id"], tuple):
            final["gpu_id"] = ",".join(map(str, final["gpu_id"]))
        final["gpu_id"] = str(final["gpu_id"])
        os.environ["CUDA_VISIBLE_DEVICES"] = final["gpu_id"]
        cuda = use_cuda(final)
        if cuda and torch.cuda.device_count() < final["nproc"]:
            raise PluginConfigError(
                f"--nproc={final['nproc']} but only {torch.cuda.device_count()} GPU(s) are visible "
                f"(gpu_id='{final['gpu_id']}'): list one GPU per process in gpu_id, or set use_gpu: False."
            )
        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if cuda else "gloo",
                rank=final["local_rank"] + final["offset"],
                world_size=final["world_size"],
                init_method=f"tcp://{final['ip']}:{final['port']}",
            )
        final["device"] = torch.device("cuda", final["local_rank"]) if cuda else torch.device("cpu")
        final["single_spec"] = False
        if cuda:
            torch.cuda.set_device(final["local_rank"])
        if final["local_rank"] != 0:
            final["state"] = "error"
            final["show_progress"] = False
            final["verbose"] = False


def ddp_trainer_init(self, config, model):
    """``AbstractTrainer.__init__``: ``DistributedDataParallel`` with ``device_ids`` and
    ``SyncBatchNorm`` on a GPU only (on a CPU, BatchNorm statistics stay per process)."""
    from torch.nn.parallel import DistributedDataParallel

    self.config = config
    self.model = model
    if not config["single_spec"]:
        if torch.device(config["device"]).type == "cuda":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.distributed_model = DistributedDataParallel(self.model, device_ids=[config["local_rank"]])
        else:
            self.distributed_model = DistributedDataParallel(self.model)
