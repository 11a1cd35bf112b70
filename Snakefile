# sdce: teacher-guided pre-training study. Rules live in workflow/rules/ by stage;
# every job calls the `sdce` command line with the config slice it uses.
import copy

from snakemake.utils import min_version, validate

from sdce.config import keep_run_overrides

min_version("9.0")


configfile: "config/config.yaml"


RUNS_AS_WRITTEN = copy.deepcopy(config.get("runs", {}))
validate(config, "workflow/schemas/config.schema.yaml")
config["runs"] = keep_run_overrides(RUNS_AS_WRITTEN)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report=f"{RESULTS}/report",
