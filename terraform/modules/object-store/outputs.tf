output "bucket_names" {
  description = "Bucket names keyed by role: lake, artifacts, reports."
  value       = { for k, b in aws_s3_bucket.this : k => b.id }
}

output "bucket_arns" {
  description = "Bucket ARNs keyed by role: lake, artifacts, reports."
  value       = { for k, b in aws_s3_bucket.this : k => b.arn }
}

output "lake_uri" {
  description = "s3:// URI of the Delta lake root (Spark reads it as s3a://)."
  value       = "s3://${aws_s3_bucket.this["lake"].id}"
}

output "artifacts_uri" {
  description = "s3:// URI of the MLflow artifact root."
  value       = "s3://${aws_s3_bucket.this["artifacts"].id}"
}

output "reports_uri" {
  description = "s3:// URI where Evidently reports are written."
  value       = "s3://${aws_s3_bucket.this["reports"].id}"
}

output "readwrite_policy_json" {
  description = "IAM policy JSON granting read/write on the three buckets (and the KMS key, if any); attach it to the workloads' IRSA or Pod Identity roles."
  value       = data.aws_iam_policy_document.readwrite.json
}
