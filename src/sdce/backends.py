"""Where the training loop runs: one interface, two implementations.

    AccelerateBackend  CPU or CUDA through `accelerate`: one process, or several
                       (DDP; FSDP2 with training.parallelism: fsdp, NCCL on CUDA or
                       gloo on CPU, where the tests run it)
    XlaBackend         TPU (or the XLA CPU device, for tests) through torch_xla's PJRT
                       runtime: one process per device, bf16 or fp32

`sdce.train` calls only the methods of `Backend`, so every objective runs on every
backend and nothing in the loop names torch_xla or accelerate. Every torch_xla call of
the package is in `XlaBackend` and `_launch_xla`: another XLA runtime replaces those two.

Processes. `launch` starts the loop once per process: N local processes for
accelerate (torch's elastic launcher, the engine of `torchrun`: gloo on CPU, NCCL on
CUDA); for XLA, `sdce train` runs once per host (PJRT multi-host: `gcloud ... --worker=all`)
and torch_xla starts one process per local device. Every process slices its own part of
the same global batch (`sdce.data.batches`), so the number of processes changes how a
step is computed, never what it computes.

`check` refuses bad combinations (fp16 on XLA, more processes than devices, FSDP on XLA,
...) before any process starts or any data is read.
"""

from __future__ import annotations

import os
import uuid
from contextlib import nullcontext

import torch

BACKENDS = ("auto", "accelerate", "xla")


class TrainingError(ValueError):
    """Training cannot start as configured; the message says what to set."""


class BackendError(TrainingError):
    """A backend setting that cannot work here."""


def resolve(name: str) -> str:
    """`auto` is XLA where PJRT_DEVICE is set (TPU VMs, the XLA test), accelerate elsewhere."""
    if name not in BACKENDS:
        raise BackendError(f"--backend {name}: unknown (known: {', '.join(BACKENDS)})")
    if name == "auto":
        return "xla" if os.environ.get("PJRT_DEVICE") else "accelerate"
    return name


def resolve_processes(processes: int, backend: str) -> int:
    """0 = one process per visible GPU (a Kubernetes pod sees exactly its gpu resource),
    one on CPU; XLA always one per host."""
    if processes == 0:
        return 1 if backend == "xla" else max(1, torch.cuda.device_count())
    return processes


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check(spec: dict, model_spec: dict, backend: str, processes: int) -> None:
    """Refuse what cannot run, before any process starts. `spec` is the training slice."""
    if processes < 1:
        raise BackendError(f"--processes {processes}: need at least 1 (0 = one per GPU)")
    attn = model_spec["attn_implementation"]
    if backend == "xla":
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            raise BackendError(
                "--backend xla needs torch_xla (pip install torch-xla matching torch; see README, TPU)"
            ) from None
        if spec["precision"] == "fp16":
            raise BackendError(
                "training.precision=fp16 is not supported on XLA (TPUs compute in bfloat16): "
                "set training.precision to bf16 or fp32"
            )
        if processes != 1:
            raise BackendError(
                f"--processes {processes} with --backend xla: run one sdce train per host; "
                "torch_xla starts one process per local device itself"
            )
        if spec["parallelism"] != "ddp":
            raise BackendError(
                "training.parallelism=fsdp is implemented with accelerate (CPU, CUDA); use ddp on XLA"
            )
        if spec["compile"]:
            raise BackendError(
                "training.compile: XLA already compiles every step's graph; set training.compile: false"
            )
        if attn == "flash_attention_2":
            raise BackendError("model.attn_implementation=flash_attention_2 needs CUDA; use sdpa or eager")
        return
    cuda = torch.cuda.is_available()
    if spec["precision"] == "fp16" and not cuda:
        raise BackendError("training.precision=fp16 needs a CUDA device; use bf16 or fp32 here")
    if attn == "flash_attention_2":
        if not cuda:
            raise BackendError("model.attn_implementation=flash_attention_2 needs CUDA; use sdpa or eager")
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise BackendError(
                "model.attn_implementation=flash_attention_2 needs the flash-attn package; "
                "install it or use sdpa"
            ) from None
    if _distributed_env():
        return  # already one of several launched processes: the launcher counted devices
    devices, what = (torch.cuda.device_count(), "CUDA devices") if cuda else (_cpu_cores(), "CPU cores")
    if processes > devices:
        raise BackendError(
            f"--processes {processes} but this machine has {devices} {what}: lower the train "
            "rule's processes (or gpu) resource to at most that"
        )


def _distributed_env() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(fn, kwargs: dict, *, backend: str, processes: int):
    """Run `fn(**kwargs)` in every process; the main process's result (or None)."""
    if backend == "xla":
        return _launch_xla(fn, kwargs)
    if processes == 1 or _distributed_env():
        return fn(**kwargs)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,  # a failed process fails the job; Snakemake retries, the run resumes
        monitor_interval=0.1,
        start_method="spawn",
    )
    return elastic_launch(config, _call)(fn, kwargs)[0]


def _call(fn, kwargs):
    return fn(**kwargs)


def _launch_xla(fn, kwargs):
    import torch_xla.distributed.xla_multiprocessing as xmp

    # one process per local device (chip); PJRT joins the hosts of a pod into one world
    xmp.spawn(_xla_entry, args=(fn, kwargs))
    return None


def _xla_entry(index, fn, kwargs):
    fn(**kwargs)


def create(spec: dict, backend: str):
    """The backend object of this process (inside `launch`)."""
    return XlaBackend(spec) if backend == "xla" else AccelerateBackend(spec)


class Backend:
    """What the loop needs from a device and a process group.

    name, device, rank, world, is_main, is_local_main, static_shapes (pad to fixed
    shapes: XLA compiles one graph per shape).
    """

    name = "base"
    static_shapes = False

    def place(self, model):
        """Move the model to the device before the optimizer is built (XLA); else as is."""
        return model

    def prepare(self, model, optimizer):
        return model, optimizer

    def autocast(self):
        return nullcontext()

    def no_sync(self, model):
        return nullcontext()

    def backward(self, loss) -> None:
        loss.backward()

    def clip_and_step(self, model, optimizer, max_norm: float):
        raise NotImplementedError

    def mark_step(self) -> None:
        """End of a traced step (XLA cuts and runs the graph here); nothing elsewhere."""

    def reduce(self, tensor, op: str):
        return tensor

    def barrier(self, tag: str) -> None:
        pass

    def unwrap(self, model):
        return model

    def model_state(self, model) -> dict | None:
        """The weights to save when the model's own are not complete CPU tensors (FSDP
        shards, XLA tensors), on the main process; else None. Every process calls it."""
        raise NotImplementedError

    def optimizer_state(self, model, optimizer) -> dict | None:
        raise NotImplementedError

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def scaler(self):
        return None

    def print(self, *args) -> None:
        if self.is_main:
            print(*args, flush=True)

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "processes": self.world}


class AccelerateBackend(Backend):
    name = "accelerate"

    def __init__(self, spec: dict):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        # several runs in one process (tests, notebooks) may differ in precision; the
        # process group (PartialState) is kept
        AcceleratorState._reset_state(reset_partial_state=False)
        precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[spec["precision"]]
        kwargs = {}
        if spec["parallelism"] == "fsdp":
            from accelerate import FullyShardedDataParallelPlugin

            # FSDP2, one unit per transformer block (the model's _no_split_modules);
            # full state dicts are gathered for save_pretrained-form checkpoints
            kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
                fsdp_version=2,
                auto_wrap_policy="transformer_based_wrap",
                state_dict_type="FULL_STATE_DICT",
                reshard_after_forward=True,
                cpu_ram_efficient_loading=False,
            )
        if spec["compile"]:
            kwargs["dynamo_backend"] = "inductor"
        self.acc = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(), **kwargs)
        self.device = self.acc.device
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main, self.is_local_main = self.acc.is_main_process, self.acc.is_local_main_process
        self.fsdp = spec["parallelism"] == "fsdp"

    def prepare(self, model, optimizer):
        return self.acc.prepare(model, optimizer)

    def no_sync(self, model):
        return self.acc.no_sync(model)

    def backward(self, loss) -> None:
        self.acc.backward(loss)

    def clip_and_step(self, model, optimizer, max_norm: float):
        grad_norm = self.acc.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        return grad_norm

    def reduce(self, tensor, op: str):
        return self.acc.reduce(tensor, op) if self.world > 1 else tensor

    def barrier(self, tag: str) -> None:
        self.acc.wait_for_everyone()

    def unwrap(self, model):
        return self.acc.unwrap_model(model, keep_torch_compile=False)

    def model_state(self, model) -> dict | None:
        if not self.fsdp:
            return None  # the unwrapped model's own weights are complete on every process
        state = self.acc.get_state_dict(model)  # gathers the shards; the main process gets it all
        return {k: v.detach().cpu() for k, v in state.items()} if self.is_main else None

    def optimizer_state(self, model, optimizer) -> dict | None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_optimizer_state_dict(model, optimizer.optimizer, options=options)
            return state if self.is_main else None
        # DDP: every process holds the same state
        return optimizer.state_dict() if self.is_main else None

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                model, optimizer.optimizer, state, options=StateDictOptions(full_state_dict=True)
            )
        else:
            optimizer.load_state_dict(state)

    def scaler(self):
        return self.acc.scaler

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": self.device.type,
            "processes": self.world,
            "parallelism": "fsdp" if self.fsdp else ("ddp" if self.world > 1 else "none"),
            "mixed_precision": self.acc.mixed_precision,
        }


class XlaBackend(Backend):
    """torch_xla (PJRT): TPU, or the XLA CPU device with PJRT_DEVICE=CPU.

    Gradients are all-reduced explicitly before clipping (xm.reduce_gradients), so no
    DDP wrapper; `mark_step` cuts the lazily traced graph after every micro-batch's
    backward and after the optimizer step, which keeps one graph per kind of step
    (shapes are static: fixed micro-batches, padded evaluation batches).
    """

    name = "xla"
    static_shapes = True

    def __init__(self, spec: dict):
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.runtime as xr

        self._torch_xla, self._xm = torch_xla, xm
        self.device = torch_xla.device()
        self.rank, self.world = xr.global_ordinal(), xr.world_size()
        self.is_main = xm.is_master_ordinal(local=False)  # checkpoints: the master ordinal only
        self.is_local_main = xm.is_master_ordinal(local=True)
        self.precision = spec["precision"]
        self.device_type = xr.device_type()

    def place(self, model):
        model = model.to(self.device)
        # moving to an XLA device unties shared weights (GPT-2's lm_head and wte would
        # become two parameters and train apart): tie them again on the device
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        return model

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast("xla", dtype=torch.bfloat16)
        return nullcontext()

    def clip_and_step(self, model, optimizer, max_norm: float):
        if self.world > 1:
            self._xm.reduce_gradients(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        return grad_norm

    def mark_step(self) -> None:
        self._torch_xla.sync()

    def reduce(self, tensor, op: str):
        if self.world == 1:
            return tensor
        total = self._xm.all_reduce(self._xm.REDUCE_SUM, tensor)
        return total / self.world if op == "mean" else total

    def barrier(self, tag: str) -> None:
        if self.world > 1:
            self._xm.rendezvous(tag)

    def model_state(self, model) -> dict | None:
        if not self.is_main:
            return None
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def optimizer_state(self, model, optimizer) -> dict | None:
        if not self.is_main:
            return None
        return _to_cpu(optimizer.state_dict())

    def describe(self) -> dict:
        import torch_xla.debug.metrics as met

        compile_time = met.metric_data("CompileTime")
        return {
            "backend": self.name,
            "device": self.device_type,
            # graphs compiled by this process: stays small when shapes are static
            "compilations": compile_time[0] if compile_time else 0,
            "processes": self.world,
            "parallelism": "replicated" if self.world > 1 else "none",
            "mixed_precision": "bf16" if self.precision == "bf16" else "no",
        }


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
