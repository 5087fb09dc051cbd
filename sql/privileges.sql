-- Who may do what with pg_exactly (src/privileges.rs says why).
--
-- PUBLIC may do nothing: no EXECUTE on any function here, no privilege on any table (nor on
-- the schema). exactly.grant_usage(role) gives an application role what it needs, and no
-- way to write pg_exactly's state around its functions: those write it as the extension's
-- owner. Run by a superuser or the extension's owner.

CREATE FUNCTION exactly.grant_usage(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'argument "role" must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'e.g. SELECT exactly.grant_usage(''app'')';
    END IF;
    -- regrole's text is the role's name, quoted where needed
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA exactly TO %s', role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly TO %s', role);
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION exactly.grant_usage(regrole) FROM %s', role);
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION exactly.set_shard(int) FROM %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON ALL TABLES IN SCHEMA exactly TO %s', role);
    -- a raffle is created by inserting its row; an account may be opened beforehand to set
    -- its limit: those columns only
    EXECUTE pg_catalog.format('GRANT INSERT (tickets_requested, code_length) ON exactly.raffles TO %s', role);
    EXECUTE pg_catalog.format('GRANT INSERT (account, min_balance, max_balance, currency) ON exactly.accounts TO %s', role);
END $$;
COMMENT ON FUNCTION exactly.grant_usage(regrole) IS
    'pg_exactly: give an application role everything it needs, and no way to write state around the functions';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly FROM PUBLIC;
