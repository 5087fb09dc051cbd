-- Before every run: no leases held on either side.
TRUNCATE ref_leases, exactly.leases;
CHECKPOINT;
