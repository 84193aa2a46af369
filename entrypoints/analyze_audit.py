"""`mlflow run . -e analyze_audit`."""

from entrypoints.cli import main
from protocol.tracking.stages.supervision import AnalyzeAuditConfig, run_analyze_audit

if __name__ == "__main__":
    main(AnalyzeAuditConfig, run_analyze_audit)
