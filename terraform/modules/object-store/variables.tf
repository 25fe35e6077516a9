variable "name_prefix" {
  type        = string
  description = "Prefix of every bucket name, e.g. \"acme-driftloop-prod\". Buckets are named <prefix>-lake, <prefix>-mlflow-artifacts and <prefix>-reports; S3 names are global, so include the account or organisation."
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-40 characters of lowercase letters, digits and hyphens, starting and ending with a letter or digit (the longest suffix, -mlflow-artifacts, must still fit S3's 63-character limit)."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "ARN of a customer-managed KMS key for SSE-KMS. Null (the default) still encrypts with aws:kms, using the AWS-managed key aws/s3."
  default     = null
  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be null or a KMS key or alias ARN."
  }
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days a noncurrent object version is kept before S3 expires it. Delta's VACUUM removes data files no longer referenced by the table; this rule then reclaims the versions S3 keeps of them. Keep it at least as long as the Delta time-travel window you promise (deletedFileRetentionDuration)."
  default     = 30
  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of days, at least 1."
  }
}

variable "noncurrent_versions_to_keep" {
  type        = number
  description = "Newest noncurrent versions of each object kept regardless of age (0-100), so a recent overwrite can always be undone."
  default     = 3
  validation {
    condition     = var.noncurrent_versions_to_keep >= 0 && var.noncurrent_versions_to_keep <= 100
    error_message = "noncurrent_versions_to_keep must be between 0 and 100 (an S3 limit)."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  type        = number
  description = "Days after which S3 aborts an incomplete multipart upload (Spark and delta-rs write large Parquet files in parts; a killed task leaves orphaned parts that are billed but invisible)."
  default     = 7
  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1
    error_message = "abort_incomplete_multipart_upload_days must be at least 1."
  }
}

variable "reports_expiration_days" {
  type        = number
  description = "Days after which current objects in the reports bucket (Evidently HTML and JSON reports) expire. Null keeps them forever. The lake and artifacts buckets never expire current objects."
  default     = null
  validation {
    condition     = var.reports_expiration_days == null || try(var.reports_expiration_days >= 1, false)
    error_message = "reports_expiration_days must be null or at least 1."
  }
}

variable "access_log_bucket" {
  type        = string
  description = "Name of an existing bucket that receives S3 server access logs for all three buckets. Null disables access logging (the organisation usually collects these centrally, or relies on CloudTrail data events)."
  default     = null
}

variable "access_log_prefix" {
  type        = string
  description = "Key prefix for access logs inside access_log_bucket; the bucket name is appended."
  default     = "s3-access/"
}

variable "force_destroy" {
  type        = bool
  description = "Allow terraform destroy to delete non-empty buckets. Off by default: a destroy must never silently delete the lake or the model artifacts."
  default     = false
}

variable "tags" {
  type        = map(string)
  description = "Tags applied to every bucket."
  default     = {}
}
