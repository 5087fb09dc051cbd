-- Before every run: empty tables, raffle 1 as in the seed (100,500 tickets), raffle 2 for
-- the single 1,000,000-ticket call, raffle 3 the hot one (never full in a run).
TRUNCATE exactly.tickets, exactly.raffles, exactly.ticket_batches, ref_tickets, ref_raffles, ref_ticket_batches;
INSERT INTO exactly.raffles (id, tickets_requested) VALUES (1, 100500), (2, 1000000), (3, 100000000);
INSERT INTO ref_raffles (id, tickets_requested) VALUES (1, 100500), (2, 1000000), (3, 100000000);
CHECKPOINT;
