-- The SQL of one keyed CreateTodo on PostgreSQL, as the service issues it: ONE statement
-- (src/idempotency/persistence.rs, claim_with_insert) that looks the key up, claims it with
-- the stored response and inserts the todo only if the claim succeeded. Each parameter is
-- written /*$n*/(value); a unit test (the_pgbench_floor_runs_the_services_statement) checks
-- that the statement with those replaced by $n is the service's, word for word.
-- pgbench -n -M prepared -f bench/keyed-create.sql <database with the service's schema>
\set n random(1, 1000000000000)
\set now_us 1800000000000000 + random(0, 1000000000)
WITH existing AS (SELECT fingerprint, response FROM idempotency_keys
WHERE caller = /*$1*/('anonymous') AND method = /*$2*/('/todo.v1.TodoService/CreateTodo')
AND key = /*$3*/('pgbench-' || :client_id || '-' || :n)
AND created_at_us >= /*$4*/(:now_us - 86400000000)),
claim AS (INSERT INTO idempotency_keys (caller, method, key, fingerprint, response, created_at_us)
SELECT /*$1*/('anonymous'), /*$2*/('/todo.v1.TodoService/CreateTodo'),
/*$3*/('pgbench-' || :client_id || '-' || :n),
/*$5*/(decode('a3f1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90', 'hex')),
/*$6*/(decode('0a2430316132323136372d333065372d373633632d386633322d656134643062656461666233120b62656e6368203132333435', 'hex')),
/*$7*/(:now_us)
WHERE NOT EXISTS (SELECT 1 FROM existing)
ON CONFLICT (caller, method, key) DO UPDATE SET fingerprint = excluded.fingerprint,
response = excluded.response, created_at_us = excluded.created_at_us
WHERE idempotency_keys.created_at_us < /*$4*/(:now_us - 86400000000)
RETURNING 1),
work AS (INSERT INTO "todos" ("id", "title", "description", "completed", "create_time_us", "update_time_us", "revision", "owner")
SELECT /*$8*/(gen_random_uuid()), /*$9*/('bench ' || :n), /*$10*/(''), /*$11*/(false),
/*$12*/(:now_us), /*$13*/(:now_us), /*$14*/(1), /*$15*/('anonymous')
WHERE EXISTS (SELECT 1 FROM claim))
SELECT EXISTS (SELECT 1 FROM claim) AS claimed, existing.fingerprint, existing.response
FROM (SELECT 1) AS one LEFT JOIN existing ON true;
