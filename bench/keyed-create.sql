-- The SQL of one keyed CreateTodo on PostgreSQL, statement for statement as the service
-- issues it (see src/idempotency/ and src/storage/todos.rs): the key lookup, then ONE
-- transaction with the todo insert and the key claim carrying the stored response.
-- pgbench -M prepared -f bench/keyed-create.sql; needs the service's schema.
\set n random(1, 1000000000000)
\set now_us 1800000000000000 + random(0, 1000000000)
SELECT caller, method, key, fingerprint, response, created_at_us FROM idempotency_keys WHERE caller = 'anonymous' AND method = '/todo.v1.TodoService/CreateTodo' AND key = 'pgbench-' || :client_id || '-' || :n AND created_at_us >= :now_us - 86400000000 LIMIT 1;
BEGIN;
INSERT INTO todos (id, title, description, completed, create_time_us, update_time_us, revision, owner) VALUES (gen_random_uuid(), 'bench ' || :n, '', false, :now_us, :now_us, 1, 'anonymous');
INSERT INTO idempotency_keys (caller, method, key, fingerprint, response, created_at_us) VALUES ('anonymous', '/todo.v1.TodoService/CreateTodo', 'pgbench-' || :client_id || '-' || :n, decode('a3f1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90', 'hex'), decode('0a2430316132323136372d333065372d373633632d386633322d656134643062656461666233120b62656e6368203132333435', 'hex'), :now_us) ON CONFLICT (caller, method, key) DO UPDATE SET fingerprint = excluded.fingerprint, response = excluded.response, created_at_us = excluded.created_at_us WHERE idempotency_keys.created_at_us < :now_us - 86400000000;
COMMIT;
