# ---------------------------------------------------------------------------------------
# Project and placement
# ---------------------------------------------------------------------------------------
variable "project_id" {
  description = "ID of the Google Cloud project that hosts the study (an existing project with billing)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID: 6-30 characters, lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the network, the artifacts bucket, the Artifact Registry repository and the GKE cluster's zone."
  type        = string
  default     = "us-central1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a region name such as us-central1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (network, cluster, service accounts, repository)."
  type        = string
  default     = "sdce"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}$", var.name_prefix))
    error_message = "name_prefix must be 2-15 characters: lowercase letters, digits, hyphens, starting with a letter."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = { project = "sdce" }
  validation {
    condition = alltrue([
      for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "Label keys must start with a lowercase letter; keys and values use lowercase letters, digits, '_' and '-' (at most 63)."
  }
}

variable "deletion_protection" {
  description = "Protect the GKE cluster from `terraform destroy` (set false before tearing the study down)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------
# Artifacts bucket
# ---------------------------------------------------------------------------------------
variable "artifact_bucket_name" {
  description = "Globally unique name of the GCS bucket for datasets, checkpoints, results and Snakemake's default storage."
  type        = string
  validation {
    condition = alltrue([
      can(regex("^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$", var.artifact_bucket_name)),
      !startswith(var.artifact_bucket_name, "goog"),
      !strcontains(var.artifact_bucket_name, "google"),
    ])
    error_message = "artifact_bucket_name must follow GCS naming: 3-63 characters, lowercase letters, digits, '-' and '_', starting and ending with a letter or digit, not starting with 'goog' and not containing 'google'."
  }
}

variable "bucket_location" {
  description = "Location of the artifacts bucket; the default (empty) means the region, next to the cluster."
  type        = string
  default     = ""
}

variable "checkpoint_prefix" {
  description = "Object prefix under which training writes checkpoints; the lifecycle rules below apply to it only."
  type        = string
  default     = "checkpoints/"
  validation {
    condition     = length(var.checkpoint_prefix) > 0 && endswith(var.checkpoint_prefix, "/")
    error_message = "checkpoint_prefix must be a non-empty prefix ending in '/'."
  }
}

variable "checkpoint_noncurrent_versions_kept" {
  description = "Non-current (overwritten) versions of each checkpoint object kept; older ones are deleted."
  type        = number
  default     = 2
  validation {
    condition     = var.checkpoint_noncurrent_versions_kept >= 1 && floor(var.checkpoint_noncurrent_versions_kept) == var.checkpoint_noncurrent_versions_kept
    error_message = "checkpoint_noncurrent_versions_kept must be a whole number >= 1."
  }
}

variable "checkpoint_noncurrent_days" {
  description = "Days after which a non-current checkpoint version is deleted whatever the count."
  type        = number
  default     = 14
  validation {
    condition     = var.checkpoint_noncurrent_days >= 1
    error_message = "checkpoint_noncurrent_days must be at least 1."
  }
}

variable "enable_storage_data_access_logs" {
  description = "Turn on Cloud Audit data-access logs (DATA_READ, DATA_WRITE) for Cloud Storage in the project: the access record of the artifacts bucket."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------
# Artifact Registry
# ---------------------------------------------------------------------------------------
variable "registry_repository_id" {
  description = "ID of the Artifact Registry Docker repository holding the cpu, cuda and tpu images."
  type        = string
  default     = "sdce"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,62}$", var.registry_repository_id))
    error_message = "registry_repository_id must be lowercase letters, digits and hyphens, starting with a letter (at most 63)."
  }
}

# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------
variable "subnet_cidr" {
  description = "Primary range of the cluster's subnet (node addresses)."
  type        = string
  default     = "10.10.0.0/20"
  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0))
    error_message = "subnet_cidr must be an IPv4 CIDR block."
  }
}

variable "pods_cidr" {
  description = "Secondary range of the cluster's subnet for pod addresses."
  type        = string
  default     = "10.16.0.0/14"
  validation {
    condition     = can(cidrhost(var.pods_cidr, 0))
    error_message = "pods_cidr must be an IPv4 CIDR block."
  }
}

variable "services_cidr" {
  description = "Secondary range of the cluster's subnet for service addresses."
  type        = string
  default     = "10.20.0.0/20"
  validation {
    condition     = can(cidrhost(var.services_cidr, 0))
    error_message = "services_cidr must be an IPv4 CIDR block."
  }
}

variable "tpu_subnet_cidr" {
  description = "Range of the TPU subnet (in the TPU zone's region)."
  type        = string
  default     = "10.30.0.0/20"
  validation {
    condition     = can(cidrhost(var.tpu_subnet_cidr, 0))
    error_message = "tpu_subnet_cidr must be an IPv4 CIDR block."
  }
}

# ---------------------------------------------------------------------------------------
# GKE cluster
# ---------------------------------------------------------------------------------------
variable "gke_zone" {
  description = "Zone of the (zonal) GKE cluster; it must offer the GPU type of the GPU pool."
  type        = string
  default     = "us-central1-a"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.gke_zone))
    error_message = "gke_zone must be a zone name such as us-central1-a."
  }
}

variable "release_channel" {
  description = "GKE release channel; the channel upgrades control plane and nodes."
  type        = string
  default     = "REGULAR"
  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "master_ipv4_cidr_block" {
  description = "/28 range of the control plane's private endpoint (private cluster)."
  type        = string
  default     = "172.16.0.0/28"
  validation {
    condition     = can(cidrhost(var.master_ipv4_cidr_block, 0)) && endswith(var.master_ipv4_cidr_block, "/28")
    error_message = "master_ipv4_cidr_block must be an IPv4 /28 block."
  }
}

variable "master_authorized_networks" {
  description = "CIDR blocks allowed to reach the control plane's public endpoint (kubectl, snakemake). Empty: none but Google Cloud addresses of the project (use Cloud Shell or a bastion)."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []
  validation {
    condition     = alltrue([for n in var.master_authorized_networks : can(cidrhost(n.cidr_block, 0)) && n.cidr_block != "0.0.0.0/0"])
    error_message = "Each master authorized network must be a CIDR block other than 0.0.0.0/0."
  }
}

variable "k8s_namespace" {
  description = "Kubernetes namespace the Snakemake executor submits jobs to (its --kubernetes-namespace)."
  type        = string
  default     = "sdce"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_namespace))
    error_message = "k8s_namespace must be a DNS label."
  }
}

variable "k8s_service_account" {
  description = "Kubernetes service account the jobs run as (the executor's --kubernetes-service-account-name); bound to the workload service account through Workload Identity."
  type        = string
  default     = "sdce-jobs"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.k8s_service_account))
    error_message = "k8s_service_account must be a DNS label."
  }
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU pool (system pods, data preparation, evaluation, reports)."
  type        = string
  default     = "e2-standard-8"
}

variable "cpu_pool_min_nodes" {
  description = "Autoscaling minimum of the CPU pool; at least 1 so system pods have a node."
  type        = number
  default     = 1
  validation {
    condition     = var.cpu_pool_min_nodes >= 1
    error_message = "cpu_pool_min_nodes must be at least 1 (kube-system pods need a node)."
  }
}

variable "cpu_pool_max_nodes" {
  description = "Autoscaling maximum of the CPU pool."
  type        = number
  default     = 4
  validation {
    condition     = var.cpu_pool_max_nodes >= var.cpu_pool_min_nodes
    error_message = "cpu_pool_max_nodes must be >= cpu_pool_min_nodes."
  }
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool. GPU jobs reach the pool through it: a rule's `machine_type` resource becomes the executor's node selector on node.kubernetes.io/instance-type, so this type must be used by no other pool."
  type        = string
  default     = "g2-standard-8"
  validation {
    condition     = var.gpu_machine_type != var.cpu_machine_type
    error_message = "gpu_machine_type must differ from cpu_machine_type: the machine type is what steers GPU jobs to the GPU pool."
  }
}

variable "gpu_accelerator_type" {
  description = "GPU type attached to each GPU node (must match the machine family: nvidia-l4 for g2, nvidia-tesla-a100 for a2-highgpu, nvidia-h100-80gb for a3)."
  type        = string
  default     = "nvidia-l4"
  validation {
    condition     = can(regex("^nvidia-[a-z0-9-]+$", var.gpu_accelerator_type))
    error_message = "gpu_accelerator_type must be a GKE accelerator name such as nvidia-l4."
  }
}

variable "gpu_accelerator_count" {
  description = "GPUs per GPU node (must match the machine type: g2-standard-8 has 1)."
  type        = number
  default     = 1
  validation {
    condition     = contains([1, 2, 4, 8, 16], var.gpu_accelerator_count)
    error_message = "gpu_accelerator_count must be 1, 2, 4, 8 or 16."
  }
}

# Changing this value RECREATES the GPU node pool (gpu_driver_installation_config is
# immutable on a node pool): running GPU jobs are killed and the pool comes back empty.
variable "gpu_driver_version" {
  description = "NVIDIA driver GKE installs on GPU nodes: DEFAULT, LATEST, or INSTALLATION_DISABLED (install it yourself). Changing it recreates the GPU node pool."
  type        = string
  default     = "LATEST"
  validation {
    condition     = contains(["DEFAULT", "LATEST", "INSTALLATION_DISABLED"], var.gpu_driver_version)
    error_message = "gpu_driver_version must be DEFAULT, LATEST or INSTALLATION_DISABLED."
  }
}

variable "gpu_spot" {
  description = "Run the GPU pool on Spot VMs (cheaper, preemptible; training resumes from checkpoints). GKE adds no taint for Spot, so jobs need no Spot toleration."
  type        = bool
  default     = true
}

variable "gpu_pool_max_nodes" {
  description = "Autoscaling maximum of the GPU pool (its minimum is 0: no GPU node runs while no GPU job waits)."
  type        = number
  default     = 4
  validation {
    condition     = var.gpu_pool_max_nodes >= 1
    error_message = "gpu_pool_max_nodes must be at least 1."
  }
}

variable "node_disk_size_gb" {
  description = "Boot disk size of every node, in GB (images with CUDA wheels are large)."
  type        = number
  default     = 200
  validation {
    condition     = var.node_disk_size_gb >= 50
    error_message = "node_disk_size_gb must be at least 50."
  }
}

# ---------------------------------------------------------------------------------------
# TPU
# ---------------------------------------------------------------------------------------
variable "tpu_provisioning" {
  description = "How Terraform provides TPU capacity: none (infra/gcloud/tpu-pod.sh makes queued resources, spot included), vm (a google_tpu_v2_vm with spot/preemptible scheduling), or queued (a google_tpu_v2_queued_resource, on-demand)."
  type        = string
  default     = "none"
  validation {
    condition     = contains(["none", "vm", "queued"], var.tpu_provisioning)
    error_message = "tpu_provisioning must be none, vm or queued."
  }
}

variable "tpu_name" {
  description = "Name of the TPU node (and of the queued resource)."
  type        = string
  default     = "sdce-tpu"
  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", var.tpu_name))
    error_message = "tpu_name must be lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "tpu_zone" {
  description = "Zone of the TPU capacity (TPU v4: us-central2-b)."
  type        = string
  default     = "us-central2-b"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.tpu_zone))
    error_message = "tpu_zone must be a zone name such as us-central2-b."
  }
}

variable "tpu_accelerator_type" {
  description = "TPU accelerator type, e.g. v4-8, v4-32 (a pod slice), v5p-8, v5litepod-16."
  type        = string
  default     = "v4-32"
  validation {
    condition     = can(regex("^(v2|v3|v4|v5p|v5litepod|v6e)-[0-9]+$", var.tpu_accelerator_type))
    error_message = "tpu_accelerator_type must look like v4-32, v5p-8 or v5litepod-16."
  }
}

variable "tpu_runtime_version" {
  description = "TPU VM software version (for TPU v4 with PyTorch/XLA: tpu-ubuntu2204-base)."
  type        = string
  default     = "tpu-ubuntu2204-base"
}

variable "tpu_spot" {
  description = "Spot scheduling for the TPU VM (tpu_provisioning = vm)."
  type        = bool
  default     = true
}
