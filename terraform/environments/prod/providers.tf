provider "aws" {
  region = var.aws_region

  default_tags {
    tags = local.tags
  }
}

# The cluster is a prerequisite (see terraform/README.md); point at it through
# a kubeconfig context, e.g. one written by `aws eks update-kubeconfig`.
provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = var.kubeconfig_path
    config_context = var.kube_context
  }
}
