terraform {
  # 1.9+: input validations may refer to other variables.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.49"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 6.49"
    }
  }

  # Partial configuration: the state bucket and prefix are given at init time,
  #   terraform init -backend-config=backend.hcl
  # with backend.hcl written from backend.hcl.example (README step 2).
  backend "gcs" {}
}
