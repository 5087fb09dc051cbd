\i bench/transfers/reference.psql
