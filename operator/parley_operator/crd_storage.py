"""The CRD schema of the region's object storage, media and search (parley_operator.crds)."""

from __future__ import annotations

from parley_operator.crd_schema import (
    Schema,
    integer_schema,
    object_schema,
    string_schema,
    validations,
)
from parley_operator.spec import (
    MAX_TIER_DAYS,
    MIN_ARCHIVE_DAYS,
    MIN_DAYS_IN_INFREQUENT,
    MIN_INFREQUENT_DAYS,
    S3_ADDRESSING_STYLES,
)


def s3_schema() -> Schema:
    return object_schema(
        "S3-compatible object storage (AWS S3, MinIO, Ceph RGW) for media and the archive: "
        "one bucket per region.",
        {
            "bucket": string_schema("Bucket name.", minLength=3, maxLength=63),
            "endpoint": string_schema(
                "Endpoint URL the services call (empty: AWS S3 of `region`).",
                pattern=r"^https?://",
            ),
            "publicEndpoint": string_schema(
                "Endpoint URL clients reach the store at, put in presigned URLs (they sign "
                "the host); empty: `endpoint`.",
                pattern=r"^https?://",
            ),
            "region": string_schema("Bucket region (used in request signatures).", maxLength=64),
            "addressingStyle": string_schema(
                "Bucket addressing: path (endpoint/bucket/key, works everywhere), virtual "
                "(bucket.endpoint/key) or auto.",
                enum=list(S3_ADDRESSING_STYLES),
                default="path",
            ),
            "credentialsSecretRef": object_schema(
                "Secret with the access key pair, mounted as files into svc_media. Leave it "
                "out to use the default AWS credential chain (a role bound to "
                "media.serviceAccountName, or the node's).",
                {
                    "name": string_schema("Secret name.", minLength=1),
                    "accessKeyIdKey": string_schema(
                        "Key of the access key id.", minLength=1, default="AWS_ACCESS_KEY_ID"
                    ),
                    "secretAccessKeyKey": string_schema(
                        "Key of the secret access key.",
                        minLength=1,
                        default="AWS_SECRET_ACCESS_KEY",
                    ),
                },
                required=["name"],
            ),
        },
        required=["bucket"],
    )


def media_schema() -> Schema:
    return object_schema(
        "svc_media, end-to-end encrypted attachments in the region's bucket (spec.s3). Its "
        "replicas and scaling are under services.media; other settings go in config.media.",
        {
            "enabled": {
                "type": "boolean",
                "description": "Run svc_media. Needs spec.s3 and spec.auth.serviceTokenSecretRef.",
                "default": False,
            },
            "serviceAccountName": string_schema(
                "ServiceAccount of the media pods, e.g. one bound to an IAM role that may use "
                "the bucket (then leave out s3.credentialsSecretRef); empty: none.",
                pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                maxLength=253,
            ),
            "maxObjectBytes": integer_schema(
                "Largest ciphertext one upload may carry, in bytes (media.max_object_bytes).",
                minimum=1,
                maximum=5 * 1024**4,
            ),
            "gcGraceSeconds": integer_schema(
                "Seconds media stays after its last reference went before garbage collection "
                "checks it (media.gc_grace_seconds).",
                minimum=0,
                maximum=30 * 86400,
            ),
            "tiers": _media_tiers(),
            "quotas": object_schema(
                "Per-account quotas in ciphertext bytes (media.quotas); forwards count against "
                "no quota of the forwarder.",
                {
                    "dailyUploadBytes": integer_schema(
                        "Bytes one account may upload per UTC day.", minimum=1
                    ),
                    "storedBytes": integer_schema(
                        "Bytes of the media one account uploaded that may be kept at once.",
                        minimum=1,
                    ),
                },
            ),
        },
        default={},
    )


def search_schema() -> Schema:
    return object_schema(
        "svc_search, the opt-in server blind index over end-to-end encrypted history (postings "
        "in MongoDB). Its replicas and scaling are under services.search; other settings go in "
        "config.search.",
        {
            "enabled": {
                "type": "boolean",
                "description": "Run svc_search. Needs spec.auth.serviceTokenSecretRef.",
                "default": False,
            },
        },
        default={},
    )


# What real S3 runs and bills (parley_core.config, MediaTierSettings), said to the API server.
TIERS_RULE = (
    "!has(self.infrequentAfterDays) || !has(self.archiveAfterDays) "
    "|| self.infrequentAfterDays == 0 || self.archiveAfterDays == 0 "
    f"|| self.archiveAfterDays >= self.infrequentAfterDays + {MIN_DAYS_IN_INFREQUENT}"
)


def _days_or_off(description: str, least: int) -> Schema:
    # 0 turns the transition off; otherwise S3's floor (a JSON schema can say "0 or >= n").
    return integer_schema(
        description, minimum=0, maximum=MAX_TIER_DAYS, anyOf=[{"enum": [0]}, {"minimum": least}]
    )


def _media_tiers() -> Schema:
    return object_schema(
        "Storage tiers of the media bucket (media.tiers), set as its lifecycle rules: objects "
        "move STANDARD -> STANDARD_IA -> GLACIER. Left out, svc_media's defaults apply "
        "(STANDARD_IA after 30 days, no GLACIER, objects of 128 KiB or less never move).",
        {
            "infrequentAfterDays": _days_or_off(
                f"Days after upload an object moves to STANDARD_IA; 0 never, else at least "
                f"{MIN_INFREQUENT_DAYS} (S3 moves nothing sooner).",
                MIN_INFREQUENT_DAYS,
            ),
            "archiveAfterDays": _days_or_off(
                f"Days after upload an object moves to GLACIER (downloads then need RestoreMedia); "
                f"0 never, else at least {MIN_ARCHIVE_DAYS} (Glacier bills {MIN_ARCHIVE_DAYS} days "
                f"at least) and at least infrequentAfterDays + {MIN_DAYS_IN_INFREQUENT} when both "
                "are on.",
                MIN_ARCHIVE_DAYS,
            ),
            "minObjectBytes": integer_schema(
                "Objects of at most this many bytes never move (S3 transitions nothing under "
                "128 KiB by default, and a thumbnail in Glacier would need a restore).",
                minimum=0,
                maximum=5 * 1024**4,
            ),
        },
        **validations(
            TIERS_RULE,
            f"archiveAfterDays must be at least infrequentAfterDays + {MIN_DAYS_IN_INFREQUENT} "
            "(S3 keeps objects 30 days in STANDARD_IA before archiving them)",
        ),
    )
