locals {
  # One entry per bucket. Only the reports bucket may expire current objects:
  # the lake's Delta log and MLflow's artifacts are the system of record.
  buckets = {
    lake = {
      name            = "${var.name_prefix}-lake"
      purpose         = "Delta Lake tables (bronze, quarantine, features, prediction log)"
      expiration_days = null
    }
    artifacts = {
      name            = "${var.name_prefix}-mlflow-artifacts"
      purpose         = "MLflow artifact store (models, bentos, run artifacts)"
      expiration_days = null
    }
    reports = {
      name            = "${var.name_prefix}-reports"
      purpose         = "Evidently drift and performance reports"
      expiration_days = var.reports_expiration_days
    }
  }
}

resource "aws_s3_bucket" "this" {
  for_each = local.buckets

  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery decision taken per organisation (and doubles storage cost); the lake can be rebuilt from landing data and versioning already protects against deletes.
  #checkov:skip=CKV2_AWS_62:Nothing consumes S3 event notifications: Airflow Assets, not bucket events, drive the pipeline.
  bucket        = each.value.name
  force_destroy = var.force_destroy

  tags = merge(var.tags, {
    "driftloop/bucket"  = each.key
    "driftloop/purpose" = each.value.purpose
  })
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  rule {
    # Disables ACLs entirely: access is governed by IAM and the bucket policy only.
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = aws_s3_bucket.this

  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # S3 Bucket Keys cut KMS request costs by orders of magnitude for Spark's many small reads.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  # Delta's VACUUM deletes unreferenced data files; on a versioned bucket that
  # only turns them into noncurrent versions, so expire those here.
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}

    noncurrent_version_expiration {
      noncurrent_days           = var.noncurrent_version_expiration_days
      newer_noncurrent_versions = var.noncurrent_versions_to_keep > 0 ? var.noncurrent_versions_to_keep : null
    }
  }

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  # Once every noncurrent version behind a delete marker has expired, the
  # marker itself is useless and slows LIST calls; remove it.
  rule {
    id     = "remove-expired-delete-markers"
    status = "Enabled"
    filter {}

    expiration {
      expired_object_delete_marker = true
    }
  }

  dynamic "rule" {
    for_each = local.buckets[each.key].expiration_days == null ? [] : [local.buckets[each.key].expiration_days]
    content {
      id     = "expire-current-objects"
      status = "Enabled"
      filter {}

      expiration {
        days = rule.value
      }
    }
  }

  # The lifecycle rules act on versions, so versioning must exist first.
  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "tls_only" {
  for_each = aws_s3_bucket.this

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      each.value.arn,
      "${each.value.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyOutdatedTls"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      each.value.arn,
      "${each.value.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  policy = data.aws_iam_policy_document.tls_only[each.key].json

  # A bucket policy is rejected while the public access block is being set up.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_logging" "this" {
  for_each = var.access_log_bucket == null ? {} : aws_s3_bucket.this

  bucket        = each.value.id
  target_bucket = var.access_log_bucket
  target_prefix = "${var.access_log_prefix}${each.value.id}/"
}

# A least-privilege policy for the workloads (Airflow tasks, Spark jobs, the
# MLflow server, serving) to attach to their IRSA / Pod Identity roles.
data "aws_iam_policy_document" "readwrite" {
  statement {
    sid       = "ListDriftloopBuckets"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [for b in aws_s3_bucket.this : b.arn]
  }

  statement {
    sid = "ReadWriteDriftloopObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [for b in aws_s3_bucket.this : "${b.arn}/*"]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "UseDriftloopKmsKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}
