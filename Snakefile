# sdce: teacher-guided pre-training study. Rules live in workflow/rules/ by stage;
# every job calls the `sdce` command line with the config slice it uses.
from snakemake.utils import min_version

from sdce import plan as sdce_plan

min_version("9.0")


# config/config.yaml is the study only when no --configfile is given: a user's config file
# is the whole study, not merged over the default one.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# workflow/schemas/config.schema.yaml fills the defaults into config, then the checks across
# keys (baseline, batch, shapes, corpus path, teachers): the validation `sdce check-config`
# runs; a refused config stops the parse with the key in one line, before any job
PLAN = sdce_plan.parse(config)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/ppo.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report=f"{RESULTS}/report",
