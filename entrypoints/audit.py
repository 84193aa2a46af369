"""`mlflow run . -e audit`."""

from entrypoints.cli import main
from protocol.tracking.stages.supervision import AuditConfig, run_audit

if __name__ == "__main__":
    main(AuditConfig, run_audit)
