# Remote state, partially configured: the bucket, key, region and lock table
# differ per organisation, so they come from a file kept outside git:
#
#   terraform init -backend-config=backend.hcl
#
# with backend.hcl like backend.hcl.example beside this file.
terraform {
  backend "s3" {}
}
