{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "expie-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "expie-gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "expie-gateway.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "expie-gateway.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "expie-gateway.simulatorName" -}}
{{- printf "%s-simulator" (include "expie-gateway.fullname" . | trunc 53 | trimSuffix "-") -}}
{{- end -}}

{{- define "expie-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: expie-gateway
{{- end -}}

{{- define "expie-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "expie-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "expie-gateway.simulatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "expie-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: simulator
{{- end -}}

{{- define "expie-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "expie-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "expie-gateway.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "expie-gateway.secretName" -}}
{{- .Values.existingSecret | default (include "expie-gateway.fullname" .) -}}
{{- end -}}

{{/* ---------------------------------------------------------------- where the process reads and writes */}}

{{- define "expie-gateway.configPath" -}}/etc/expie-gateway/gateway.yaml{{- end -}}
{{- define "expie-gateway.secretsDir" -}}/etc/expie-gateway/secrets{{- end -}}
{{- define "expie-gateway.stateDir" -}}/var/lib/expie-gateway{{- end -}}
{{- define "expie-gateway.simulatorConfigPath" -}}/etc/expie-sim/simulator.yaml{{- end -}}

{{/* The numeric user of the image (Dockerfile: USER 10001:10001). */}}
{{- define "expie-gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "expie-gateway.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* ---------------------------------------------------------------- derived settings */}}

{{/* "true" when more than one gateway process may run: replicas, or an autoscaler. */}}
{{- define "expie-gateway.several" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* "true" when the gateway's upstream is the simulator of this release. */}}
{{- define "expie-gateway.simulatorUpstream" -}}
{{- if and .Values.simulator.enabled .Values.simulator.upstream -}}true{{- end -}}
{{- end -}}

{{- define "expie-gateway.redisAuth" -}}
{{- if or .Values.redis.auth .Values.redis.password -}}true{{- end -}}
{{- end -}}

{{/* Seconds the drain may take: drainDelay + shutdownTimeout + the audit spool's 5 s. */}}
{{- define "expie-gateway.drainSeconds" -}}
{{- addf (float64 .Values.server.drainDelay) (float64 .Values.server.shutdownTimeout) 5 -}}
{{- end -}}

{{- define "expie-gateway.gracePeriod" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (int (ceil (include "expie-gateway.drainSeconds" . | float64))) 5 -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The simulator's accounts by name: {name: token}. */}}
{{- define "expie-gateway.simulatorTokens" -}}
{{- $tokens := dict -}}
{{- range (.Values.simulator.config.accounts | default list) -}}
{{- $_ := set $tokens (toString .name) (toString .token) -}}
{{- end -}}
{{- toJson $tokens -}}
{{- end -}}

{{/* The upstream accounts as {"accounts": [{name, token}]}; the simulator's fill the gaps. */}}
{{- define "expie-gateway.accounts" -}}
{{- $simulator := dict -}}
{{- $fromSimulator := include "expie-gateway.simulatorUpstream" . -}}
{{- if $fromSimulator -}}
{{- $simulator = include "expie-gateway.simulatorTokens" . | fromJson -}}
{{- end -}}
{{- $accounts := list -}}
{{- if and (not .Values.accounts) $fromSimulator -}}
{{- range (.Values.simulator.config.accounts | default list) -}}
{{- $accounts = append $accounts (dict "name" (toString .name) "token" (toString .token)) -}}
{{- end -}}
{{- else -}}
{{- range $index, $account := .Values.accounts -}}
{{- $token := $account.token | default (get $simulator $account.name) | default "" -}}
{{- $accounts = append $accounts (dict "name" $account.name "token" $token "index" $index) -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "accounts" $accounts) -}}
{{- end -}}

{{/* The token keys as {"keys": [{kid, algorithm, public, file, pem}]}; a private key left empty
     is the live Secret's (upgrades) or a new one (install). */}}
{{- define "expie-gateway.keys" -}}
{{- $live := dict -}}
{{- if not .Values.existingSecret -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "expie-gateway.fullname" .) -}}
{{- $live = (get ($secret | default dict) "data") | default dict -}}
{{- end -}}
{{- $generators := dict "EdDSA" "ed25519" "ES256" "ecdsa" "RS256" "rsa" -}}
{{- $keys := list -}}
{{- range .Values.auth.keys -}}
{{- $algorithm := .algorithm | default "EdDSA" -}}
{{- $file := printf "key-%s%s.pem" .kid (ternary ".pub" "" (.publicOnly | default false)) -}}
{{- $pem := "" -}}
{{- if .publicOnly -}}
{{- $pem = .publicKey | default "" -}}
{{- else -}}
{{- $pem = .privateKey | default (get $live $file | b64dec) | default (genPrivateKey (get $generators $algorithm)) -}}
{{- end -}}
{{- $keys = append $keys (dict "kid" .kid "algorithm" $algorithm "public" (.publicOnly | default false) "file" $file "pem" $pem) -}}
{{- end -}}
{{- toJson (dict "keys" $keys) -}}
{{- end -}}

{{- define "expie-gateway.signingKey" -}}
{{- .Values.auth.signingKey | default ((first .Values.auth.keys) | default dict).kid -}}
{{- end -}}

{{/* ---------------------------------------------------------------- refusals */}}

{{/* Settings that cannot work are refused at render time, naming the value. */}}
{{- define "expie-gateway.validate" -}}
{{- $several := include "expie-gateway.several" . -}}
{{- if and $several (not .Values.redis.url) -}}
{{- fail "redis.url is required when replicaCount > 1 or autoscaling.enabled: the in-process stores (revocations, rate limits, idempotency, kill switches) belong to one process" -}}
{{- end -}}
{{- if and (gt (int .Values.workers) 1) (not .Values.redis.url) -}}
{{- fail "redis.url is required when workers > 1: the in-process stores (revocations, rate limits, idempotency, kill switches) would belong to each worker" -}}
{{- end -}}
{{- if and (gt (int .Values.workers) 1) (eq .Values.audit.backend "file") -}}
{{- fail "audit.backend file keeps the audit trail in one process's file: it cannot serve workers > 1 (use redis, or auto with redis.url)" -}}
{{- end -}}
{{- if and $several (eq .Values.audit.backend "file") -}}
{{- fail "audit.backend file keeps the audit trail in one process's file: it cannot serve replicaCount > 1 or autoscaling.enabled (use redis, or auto with redis.url)" -}}
{{- end -}}
{{- if and (eq .Values.audit.backend "redis") (not .Values.redis.url) -}}
{{- fail "audit.backend redis needs redis.url" -}}
{{- end -}}
{{- if regexMatch "^[a-z]+://[^/@]*@" (.Values.redis.url | default "") -}}
{{- fail "redis.url must not hold credentials: put the password in redis.password (or the existingSecret's redis-password) with redis.auth" -}}
{{- end -}}
{{- if and (include "expie-gateway.redisAuth" .) (not .Values.redis.password) (not .Values.existingSecret) -}}
{{- fail "redis.password is required when redis.auth is true (or set existingSecret with a redis-password key)" -}}
{{- end -}}
{{- if and $several .Values.persistence.existingClaim -}}
{{- fail "persistence.existingClaim is one volume for one gateway process: it cannot serve replicaCount > 1 or autoscaling.enabled" -}}
{{- end -}}
{{- if and (not .Values.upstream.baseUrl) (not (include "expie-gateway.simulatorUpstream" .)) -}}
{{- fail "upstream.baseUrl is required unless simulator.enabled and simulator.upstream" -}}
{{- end -}}
{{- if not .Values.existingSecret -}}
{{- range (include "expie-gateway.accounts" . | fromJson).accounts -}}
{{- if not .token -}}
{{- fail (printf "accounts[%v].token (account %s) is required unless existingSecret is set%s" .index .name (ternary " or the simulator has that account" "" (not (empty (include "expie-gateway.simulatorUpstream" $))))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not .Values.auth.keys -}}
{{- fail "auth.keys: at least one key is required to sign tokens" -}}
{{- end -}}
{{- $signing := include "expie-gateway.signingKey" . -}}
{{- $found := false -}}
{{- range $index, $key := .Values.auth.keys -}}
{{- if and (eq $key.kid $signing) (not $key.publicOnly) -}}{{- $found = true -}}{{- end -}}
{{- if and $key.publicOnly (not $key.publicKey) (not $.Values.existingSecret) -}}
{{- fail (printf "auth.keys[%d].publicKey (kid %s) is required with publicOnly unless existingSecret is set" $index $key.kid) -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "auth.signingKey %q: no key of auth.keys with that kid and a private key" $signing) -}}
{{- end -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) -}}
{{- $needed := include "expie-gateway.drainSeconds" . | float64 -}}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds %v must be above server.drainDelay + server.shutdownTimeout + 5 s for the audit spool (%v): the drain would be killed" .Values.terminationGracePeriodSeconds $needed) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) -}}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.redis.url -}}
{{- $peers := .Values.networkPolicy.redis -}}
{{- if not (or $peers.cidrs $peers.podSelector $peers.namespaceSelector) -}}
{{- fail "networkPolicy.redis needs cidrs or a podSelector / namespaceSelector when redis.url is set" -}}
{{- end -}}
{{- end -}}
{{- if gt (mulf .Values.leadership.renewInterval 2.0) (float64 .Values.leadership.leaseTtl) -}}
{{- fail "leadership.renewInterval must be at most half of leadership.leaseTtl" -}}
{{- end -}}
{{- include "expie-gateway.validateConfig" . -}}
{{- end -}}

{{/* The keys of gateway.yaml the chart sets from its own values, refused under config. */}}
{{- define "expie-gateway.validateConfig" -}}
{{- $owned := dict
  "server" (dict "host" "(always 0.0.0.0)" "port" "server.port" "workers" "workers" "drain_delay" "server.drainDelay" "shutdown_timeout" "server.shutdownTimeout" "header_timeout" "server.headerTimeout" "body_timeout" "server.bodyTimeout" "public_url" "server.publicUrl" "trusted_proxies" "server.trustedProxies")
  "upstream" (dict "base_url" "upstream.baseUrl")
  "auth" (dict "issuer" "auth.issuer" "audience" "auth.audience" "token_ttl" "auth.tokenTtl" "max_token_ttl" "auth.maxTokenTtl" "signing_key" "auth.signingKey" "keys" "auth.keys" "external_issuers" "auth.externalIssuers")
  "redis" (dict "url" "redis.url" "password_file" "redis.auth" "password_env" "redis.auth" "require_persistence" "redis.requirePersistence")
  "audit" (dict "backend" "audit.backend" "file" "(the chart's volume)" "fsync" "audit.fsync")
  "ws" (dict "upstream_url" "upstream.wsUrl" "cluster" "leadership") -}}
{{- range $section, $keys := $owned -}}
{{- $given := get $.Values.config $section | default dict -}}
{{- range $key, $value := $keys -}}
{{- if hasKey $given $key -}}
{{- fail (printf "config.%s.%s is set by the chart: use %s" $section $key $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $switch := get (get $.Values.config "orders" | default dict) "kill_switch" | default dict -}}
{{- if hasKey $switch "state_file" -}}
{{- fail "config.orders.kill_switch.state_file is set by the chart (the pod's volume, without Redis)" -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- gateway.yaml */}}

{{- define "expie-gateway.gatewayYaml" -}}
{{- $secrets := include "expie-gateway.secretsDir" . -}}
{{- $state := include "expie-gateway.stateDir" . -}}
{{- $config := deepCopy .Values.config -}}
{{- $server := get $config "server" | default dict -}}
{{- $_ := set $server "host" "0.0.0.0" -}}
{{- $_ := set $server "port" (int .Values.server.port) -}}
{{- $_ := set $server "workers" (int .Values.workers) -}}
{{- $_ := set $server "drain_delay" .Values.server.drainDelay -}}
{{- $_ := set $server "shutdown_timeout" .Values.server.shutdownTimeout -}}
{{- $_ := set $server "header_timeout" .Values.server.headerTimeout -}}
{{- $_ := set $server "body_timeout" .Values.server.bodyTimeout -}}
{{- $_ := set $server "public_url" .Values.server.publicUrl -}}
{{- $_ := set $server "trusted_proxies" .Values.server.trustedProxies -}}
{{- $_ := set $config "server" $server -}}
{{- $upstream := get $config "upstream" | default dict -}}
{{- $fromSimulator := include "expie-gateway.simulatorUpstream" . -}}
{{- if $fromSimulator -}}
{{- $_ := set $upstream "base_url" (printf "http://%s:%d" (include "expie-gateway.simulatorName" .) (int .Values.simulator.port)) -}}
{{- else -}}
{{- $_ := set $upstream "base_url" .Values.upstream.baseUrl -}}
{{- end -}}
{{- $_ := set $config "upstream" $upstream -}}
{{- $ws := get $config "ws" | default dict -}}
{{- if and .Values.upstream.wsUrl (not $fromSimulator) -}}
{{- $_ := set $ws "upstream_url" .Values.upstream.wsUrl -}}
{{- end -}}
{{- $leadership := .Values.leadership -}}
{{- $_ := set $ws "cluster" (dict "enabled" $leadership.enabled "lease_ttl" $leadership.leaseTtl "renew_interval" $leadership.renewInterval) -}}
{{- $_ := set $config "ws" $ws -}}
{{- $auth := get $config "auth" | default dict -}}
{{- $_ := set $auth "issuer" .Values.auth.issuer -}}
{{- $_ := set $auth "audience" .Values.auth.audience -}}
{{- $_ := set $auth "token_ttl" .Values.auth.tokenTtl -}}
{{- $_ := set $auth "max_token_ttl" .Values.auth.maxTokenTtl -}}
{{- $_ := set $auth "signing_key" (include "expie-gateway.signingKey" .) -}}
{{- $keys := list -}}
{{- range .Values.auth.keys -}}
{{- $file := printf "%s/key-%s%s.pem" $secrets .kid (ternary ".pub" "" (.publicOnly | default false)) -}}
{{- $key := dict "kid" .kid "algorithm" (.algorithm | default "EdDSA") -}}
{{- $_ := set $key (ternary "public_key_file" "private_key_file" (.publicOnly | default false)) $file -}}
{{- $keys = append $keys $key -}}
{{- end -}}
{{- $_ := set $auth "keys" $keys -}}
{{- $issuers := list -}}
{{- range .Values.auth.externalIssuers -}}
{{- $issuer := dict "issuer" .issuer "jwks_url" .jwksUrl "audience" .audience "user_claim" (.userClaim | default "sub") -}}
{{- with .algorithms }}{{- $_ := set $issuer "algorithms" . -}}{{- end -}}
{{- if not (kindIs "invalid" .jwksTtl) }}{{- $_ := set $issuer "jwks_ttl" .jwksTtl -}}{{- end -}}
{{- $issuers = append $issuers $issuer -}}
{{- end -}}
{{- $_ := set $auth "external_issuers" $issuers -}}
{{- $_ := set $config "auth" $auth -}}
{{- $_ := set $config "users" (dict "file" (printf "%s/users.yaml" $secrets)) -}}
{{- $accounts := list -}}
{{- range (include "expie-gateway.accounts" . | fromJson).accounts -}}
{{- $accounts = append $accounts (dict "name" .name "token_file" (printf "%s/account-%s" $secrets .name)) -}}
{{- end -}}
{{- $_ := set $config "accounts" $accounts -}}
{{- $redis := get $config "redis" | default dict -}}
{{- $_ := set $redis "url" (.Values.redis.url | default "") -}}
{{- $_ := set $redis "require_persistence" .Values.redis.requirePersistence -}}
{{- if include "expie-gateway.redisAuth" . -}}
{{- $_ := set $redis "password_file" (printf "%s/redis-password" $secrets) -}}
{{- end -}}
{{- $_ := set $config "redis" $redis -}}
{{- $audit := get $config "audit" | default dict -}}
{{- $_ := set $audit "backend" .Values.audit.backend -}}
{{- $_ := set $audit "file" (printf "%s/audit.jsonl" $state) -}}
{{- $_ := set $audit "fsync" .Values.audit.fsync -}}
{{- if not (hasKey $audit "checkpoint_file") -}}
{{- $_ := set $audit "checkpoint_file" (printf "%s/audit-checkpoint.json" $state) -}}
{{- end -}}
{{- $_ := set $config "audit" $audit -}}
{{- if not .Values.redis.url -}}
{{- $orders := get $config "orders" | default dict -}}
{{- $switch := get $orders "kill_switch" | default dict -}}
{{- $_ := set $switch "state_file" (printf "%s/kill-switches.json" $state) -}}
{{- $_ := set $orders "kill_switch" $switch -}}
{{- $_ := set $config "orders" $orders -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
