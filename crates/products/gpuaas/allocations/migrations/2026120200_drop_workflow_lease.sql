-- The workflow claims a row by locking it in the transaction that steps it, so no
-- lease is written (and then cleared) per step any more.
ALTER TABLE allocations DROP COLUMN workflow_lease_until;
