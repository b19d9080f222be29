-- The outbox: emails and signed webhooks written in the same transaction as the state
-- change they announce, so a message exists if and only if that change committed, and is
-- retried until delivered (or dead-lettered for an operator) when a receiver is down.

CREATE TABLE webhook_endpoints (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url          text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    -- The Standard Webhooks signing secret (whsec_ + base64). It must be readable to sign,
    -- so it is stored as is; the API shows it once, at creation, and never again.
    secret       text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    -- NULL: every event type.
    event_types  text[],
    -- An agent's own storefront; NULL: the merchant's.
    agent_id     bigint REFERENCES agents (id),
    description  text CHECK (length(description) <= 200),
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    disabled_at  timestamptz
);
-- emit_event looks up the enabled endpoints of the merchant and of one agent.
CREATE INDEX webhook_endpoints_enabled ON webhook_endpoints (agent_id) WHERE enabled;

CREATE TABLE outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('email', 'webhook')),
    -- The destination: an endpoint for a webhook, an address for an email.
    endpoint_id      bigint REFERENCES webhook_endpoints (id),
    email_to         text CHECK (length(email_to) <= 320),
    -- The event type of a webhook, the template of an email.
    topic            text NOT NULL CHECK (length(topic) BETWEEN 1 AND 100),
    -- A webhook's data, or an email's template context. It can carry access (a reveal
    -- link), so it is never logged nor listed by the API.
    payload          jsonb NOT NULL,
    locale           text,
    -- Stable across retries: the webhook-id receivers deduplicate on, the email Message-ID.
    message_id       text NOT NULL UNIQUE
                     DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'sent', 'dead')),
    -- Attempts started; counted when a worker claims the row, so a message that crashes
    -- its worker every time still ends dead.
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When pending: the earliest next attempt. When sending: the end of the claiming
    -- worker's lease, after which the row is due again (the worker died).
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text CHECK (length(last_error) <= 300),
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    CHECK ((kind = 'webhook') = (endpoint_id IS NOT NULL)),
    CHECK ((kind = 'email') = (email_to IS NOT NULL)),
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
-- The worker's claim: WHERE status IN ('pending', 'sending') AND next_attempt_at <= now().
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status IN ('pending', 'sending');
-- GET /v1/outbox?status=…, newest first.
CREATE INDEX outbox_by_status ON outbox (status, id);
