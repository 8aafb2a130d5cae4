"""Names the search space, candidates and builders share. No imports: light modules read them."""

# ONNX Runtime graph-optimization levels, weakest first, and the `onnxruntime.GraphOptimizationLevel` member of
# each (`tuner.measure.runtime` maps them; the model card prints them).
ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
OPT_LEVELS = tuple(ORT_LEVELS)

# How pruning ranks channels (torch-pruning importance criteria, built in `tuner.build.prune`).
IMPORTANCE_METHODS = ("magnitude", "lamp", "fpgm", "bn_scale")

# What repairs a pruned model (`tuner.build.recovery`).
RECOVERY_METHODS = ("none", "batchnorm", "distill", "task")

# How a torch model becomes ONNX (`tuner.build.export`): torch.export-based, or the TorchScript tracer, which
# follows the branch the example input takes through data-dependent control flow.
EXPORTERS = ("dynamo", "torchscript")

# Which built models a run directory keeps (`tuner.retention`): the front's and the references', or all.
KEEP_ARTIFACTS = ("front", "all")

# What a trial's `timings` name, in the order a trial runs them (`tuner.evaluate`; `orchestration` is the
# driver's share of the trial's wall time, `tuner.search.loop`): the breakdowns `tuner run` and the experiments
# print read this list, so a new stage shows in them.
TRIAL_STAGES = ("prune", "recover", "screen", "export", "fuse", "quantize", "verify_kernels", "accuracy", "latency",
                "orchestration")

# Where candidates are built and timed (`tuner.experiment`): ONNX Runtime on CPU, or PyTorch's own runtime.
RUNTIMES = ("onnxruntime", "torch")

# PyTorch runtime: how a candidate is compiled (`tuner.build.torch_runtime`; "none": eager), and what its artifact
# is: an AOTInductor package (`model.pt2`), or the rewritten module saved whole (`model.pt`), compiled when loaded.
COMPILE_MODES = ("none", "default", "max-autotune")
TORCH_ARTIFACTS = ("package", "module")
