//! Reconciliation: compares what each node reports with what is billed.
