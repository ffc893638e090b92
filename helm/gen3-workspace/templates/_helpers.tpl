{{/* Names, labels, URLs and checks shared by the gen3-workspace templates. */}}

{{- define "gen3ws.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 42 | trimSuffix "-" -}}
{{- end -}}

{{/* Truncated to 42 so the longest suffix ("-egress-config") still fits a 63-character name. */}}
{{- define "gen3ws.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gen3ws.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gen3ws.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Usage: include "gen3ws.labels" (dict "root" $ "component" "hub") */}}
{{- define "gen3ws.labels" -}}
{{ include "gen3ws.selectorLabels" . }}
app.kubernetes.io/part-of: gen3-workspace
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels the hub gives users' pods (via KubeSpawner common_labels) and the NetworkPolicies select on. */}}
{{- define "gen3ws.notebookLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: gen3-workspace
{{- end -}}

{{- define "gen3ws.notebookSelector" -}}
component: singleuser-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Users' servers, drives and key Secrets live in a namespace of their own, never in the release
namespace next to the commons: the hub's Role there can create pods and read Secrets.
*/}}
{{- define "gen3ws.userNamespace" -}}
{{- .Values.spawner.namespace | default (printf "%s-workspace-users" .Release.Namespace) -}}
{{- end -}}

{{/*
Addresses that are not the public internet: "this network", private, shared (CGNAT, where
some clouds put their metadata service), loopback, link-local (the cloud metadata services),
IETF protocol assignments, benchmarking, multicast and reserved; for IPv6 the unspecified and
loopback addresses, the local-use NAT64 prefix, unique-local, link-local, site-local and
multicast. squid refuses them and the egress proxy's NetworkPolicy leaves them out, unless an
operator lists an internal destination. tests/helm/test_chart.py checks every range against
Python's ipaddress.is_global.
*/}}
{{- define "gen3ws.nonPublicV4" -}}
0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24 192.168.0.0/16 198.18.0.0/15 224.0.0.0/3
{{- end -}}
{{- define "gen3ws.nonPublicV6" -}}
::/128 ::1/128 64:ff9b:1::/48 fc00::/7 fe80::/10 fec0::/10 ff00::/8
{{- end -}}

{{/* The cloud metadata addresses (AWS, GCP, Azure: v4; AWS Nitro: v6), refused even when an operator lists a range that holds them. */}}
{{- define "gen3ws.metadataAddresses" -}}
169.254.169.254/32 fd00:ec2::254/128
{{- end -}}

{{- define "gen3ws.commonsUrl" -}}
{{- required "commons.url is required: the public URL of the Gen3 commons, e.g. --set commons.url=https://data.mycommons.org" .Values.commons.url | trimSuffix "/" -}}
{{- end -}}

{{/* Host (and port, if any) of commons.url. */}}
{{- define "gen3ws.commonsHost" -}}
{{- (urlParse (include "gen3ws.commonsUrl" .)).host -}}
{{- end -}}

{{- define "gen3ws.hubHost" -}}
{{- .Values.hub.host | default (include "gen3ws.commonsHost" .) -}}
{{- end -}}

{{- define "gen3ws.callbackUrl" -}}
{{- .Values.hub.oauthCallbackUrl | default (printf "https://%s%shub/oauth_callback" (include "gen3ws.hubHost" .) .Values.hub.baseUrl) -}}
{{- end -}}

{{- define "gen3ws.hubImage" -}}
{{- printf "%s/%s:%s" (.Values.imageRegistry | trimSuffix "/") .Values.hub.image.name (.Values.hub.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "gen3ws.hubService" -}}{{ include "gen3ws.fullname" . }}-hub{{- end -}}
{{- define "gen3ws.proxyPublicService" -}}{{ include "gen3ws.fullname" . }}-proxy-public{{- end -}}
{{- define "gen3ws.egressService" -}}{{ include "gen3ws.fullname" . }}-egress{{- end -}}
{{- define "gen3ws.hubSecret" -}}{{ include "gen3ws.fullname" . }}-hub{{- end -}}

{{- define "gen3ws.squidImage" -}}
{{- $i := .Values.egressProxy.image -}}
{{- printf "%s:%s@%s" $i.repository $i.tag $i.digest -}}
{{- end -}}

{{/* Namespaced names: users' servers may live in another namespace than the hub. */}}
{{- define "gen3ws.hubConnectUrl" -}}
{{- printf "http://%s.%s.svc:8081" (include "gen3ws.hubService" .) .Release.Namespace -}}
{{- end -}}

{{- define "gen3ws.egressProxyUrl" -}}
{{- if .Values.spawner.egressProxyUrl -}}
{{- .Values.spawner.egressProxyUrl -}}
{{- else if .Values.egressProxy.enabled -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "gen3ws.egressService" .) .Release.Namespace .Values.clusterDomain (int .Values.egressProxy.port) -}}
{{- end -}}
{{- end -}}

{{/* The hardened container securityContext every container of the chart gets. */}}
{{- define "gen3ws.containerSecurityContext" -}}
runAsNonRoot: true
# Nothing of the chart writes to its image; what a process must write goes to an emptyDir.
readOnlyRootFilesystem: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Empty when there are none; callers use `with` so no blank line is left behind. */}}
{{- define "gen3ws.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/*
Checks the schema cannot express; each message names the values key to fix. Included by the
hub Deployment so every render runs it.
*/}}
{{- define "gen3ws.validate" -}}
{{- $_ := include "gen3ws.commonsUrl" . -}}
{{- if not .Values.auth.clientId -}}
{{- fail "auth.clientId is required: register an OAuth client for the workspace in Fence (see docs/operator-guide.md) and set auth.clientId" -}}
{{- end -}}
{{- if and (not .Values.auth.clientSecret) (not .Values.auth.existingSecret.name) -}}
{{- fail "auth.clientSecret or auth.existingSecret.name is required: the OAuth client secret Fence issued with auth.clientId" -}}
{{- end -}}
{{- $names := list -}}
{{- range .Values.flavors.flavors -}}
{{- if has .name $names -}}
{{- fail (printf "flavors.flavors: two flavors are named %q; flavor names must be unique" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if not (has .Values.flavors.default $names) -}}
{{- fail (printf "flavors.default: no flavor is named %q (flavors: %s)" .Values.flavors.default (join ", " $names)) -}}
{{- end -}}
{{- /* What the schema cannot compare; the hub refuses the same catalogues (spawner/flavors.py). */ -}}
{{- range .Values.flavors.flavors -}}
{{- if and (hasKey .cpu "guarantee") (gt (include "gen3ws.cpuMilli" .cpu.guarantee | float64) (include "gen3ws.cpuMilli" .cpu.limit | float64)) -}}
{{- fail (printf "flavors.flavors: flavor %q, field 'cpu.guarantee': larger than cpu.limit" .name) -}}
{{- end -}}
{{- if and (hasKey .memory "guarantee") (gt (include "gen3ws.memoryBytes" .memory.guarantee | float64) (include "gen3ws.memoryBytes" .memory.limit | float64)) -}}
{{- fail (printf "flavors.flavors: flavor %q, field 'memory.guarantee': larger than memory.limit" .name) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "sslPorts" "safePorts" -}}
{{- range (index $.Values.egressProxy $key) -}}
{{- if kindIs "string" . -}}
{{- $ends := splitList "-" . -}}
{{- if gt (atoi (index $ends 0)) (atoi (index $ends 1)) -}}
{{- fail (printf "egressProxy.%s: the port range %s starts above its end" $key .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range .Values.networkPolicy.notebook.allowedInternal -}}
{{- $name := .name -}}
{{- range .ports -}}
{{- if and .endPort (not (kindIs "string" .port)) (lt (int .endPort) (int .port)) -}}
{{- fail (printf "networkPolicy.notebook.allowedInternal %q: endPort %v is below port %v" $name .endPort .port) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $userNs := include "gen3ws.userNamespace" . -}}
{{- if eq $userNs .Release.Namespace -}}
{{- fail (printf "spawner.namespace: users' servers may not live in the release namespace %q: the hub's Role there could read every Secret of the commons and start pods with its ServiceAccounts. Leave spawner.namespace empty (%s-workspace-users) or name a namespace of their own" .Release.Namespace .Release.Namespace) -}}
{{- end -}}
{{- if gt (len $userNs) 63 -}}
{{- fail (printf "spawner.namespace: %q is longer than the 63 characters a namespace name may have; set spawner.namespace to a shorter name" $userNs) -}}
{{- end -}}
{{- end -}}

{{/* A CPU quantity (cores or "500m") in millicores. */}}
{{- define "gen3ws.cpuMilli" -}}
{{- $s := toString . -}}
{{- if hasSuffix "m" $s -}}{{- trimSuffix "m" $s | float64 -}}{{- else -}}{{- mulf (float64 $s) 1000 -}}{{- end -}}
{{- end -}}

{{/* A memory quantity ("512Mi", "1G", bytes) in bytes. */}}
{{- define "gen3ws.memoryBytes" -}}
{{- $s := toString . -}}
{{- $suffix := regexFind "[KMGT]i?$" $s -}}
{{- $units := dict "" 1 "K" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- mulf (trimSuffix $suffix $s | float64) (index $units $suffix) -}}
{{- end -}}

{{/*
True ("true") if the IPv4 CIDR in . contains the cloud metadata address 169.254.169.254.
Integer arithmetic only: the network and the address are in the same block of 2^(32-prefix)
addresses exactly when their integer division by the block size is equal.
*/}}
{{- define "gen3ws.cidrHasMetadata" -}}
{{- $parts := splitList "/" . -}}
{{- $octets := splitList "." (index $parts 0) -}}
{{- $prefix := atoi (index $parts 1) -}}
{{- $net := 0 -}}
{{- range $octets -}}{{- $net = add (mul $net 256) (atoi .) -}}{{- end -}}
{{- $block := 1 -}}
{{- range until (int (sub 32 $prefix)) -}}{{- $block = mul $block 2 -}}{{- end -}}
{{- $metadata := 2852039166 -}}
{{- if eq (div $net $block) (div $metadata $block) -}}true{{- end -}}
{{- end -}}

{{/*
NetworkPolicy peers with the metadata address cut out of every ipBlock that contains it; a
/32 of the metadata address itself is refused, naming the values key.
Usage: include "gen3ws.safePeers" (dict "peers" $list "key" "networkPolicy.notebook.allowedInternal")
*/}}
{{- define "gen3ws.safePeers" -}}
{{- $key := .key -}}
{{- $peers := list -}}
{{- range .peers -}}
{{- $peer := deepCopy . -}}
{{- if .ipBlock -}}
{{- $except := .ipBlock.except | default list -}}
{{- if include "gen3ws.cidrHasMetadata" .ipBlock.cidr -}}
{{- if hasSuffix "/32" .ipBlock.cidr -}}
{{- fail (printf "%s: the ipBlock %s is the cloud metadata address, which may never be reached" $key .ipBlock.cidr) -}}
{{- end -}}
{{- if not (has "169.254.169.254/32" $except) -}}
{{- $except = append $except "169.254.169.254/32" -}}
{{- end -}}
{{- end -}}
{{- $block := dict "cidr" .ipBlock.cidr -}}
{{- if $except -}}{{- $_ := set $block "except" $except -}}{{- end -}}
{{- $_ := set $peer "ipBlock" $block -}}
{{- end -}}
{{- $peers = append $peers $peer -}}
{{- end -}}
{{- toYaml $peers -}}
{{- end -}}

{{/*
The hub's egress rule to the Kubernetes API server: networkPolicy.hub.apiServer.cidrs, else
the addresses of the "kubernetes" Service and its Endpoints as `helm install` finds them (CNIs
match either the Service address or, after translation, the endpoint's). `helm template`
cannot look them up (Argo CD, Flux, CI), so it fails saying how to find them.
*/}}
{{- define "gen3ws.apiServerEgress" -}}
{{- $api := .Values.networkPolicy.hub.apiServer -}}
{{- $cidrs := $api.cidrs | default list -}}
{{- $ports := $api.ports | default list -}}
{{- if not $cidrs -}}
{{- $svc := lookup "v1" "Service" "default" "kubernetes" -}}
{{- $eps := lookup "v1" "Endpoints" "default" "kubernetes" -}}
{{- with $svc.spec -}}{{- if .clusterIP -}}{{- $cidrs = append $cidrs (printf "%s/32" .clusterIP) -}}{{- end -}}{{- end -}}
{{- range ($eps.subsets | default list) -}}
{{- range (.addresses | default list) -}}{{- $cidrs = append $cidrs (printf "%s/32" .ip) -}}{{- end -}}
{{- range (.ports | default list) -}}{{- $ports = append $ports (int .port) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- $cidrs = $cidrs | uniq -}}
{{- if not $cidrs -}}
{{- fail "networkPolicy.hub.apiServer.cidrs is required where the chart cannot look the API server up (helm template, Argo CD, Flux): list the addresses of the Kubernetes API server as /32 CIDRs, the Service address and the endpoints' (kubectl get service kubernetes -n default -o jsonpath='{.spec.clusterIP}'; kubectl get endpoints kubernetes -n default -o jsonpath='{.subsets[*].addresses[*].ip}'), and their port in networkPolicy.hub.apiServer.ports; or set networkPolicy.enabled=false" -}}
{{- end -}}
- to:
    {{- range $cidrs }}
    - ipBlock:
        cidr: {{ if contains "/" . }}{{ . }}{{ else }}{{ . }}/32{{ end }}
    {{- end }}
  ports:
    {{- range ($ports | uniq) }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end -}}

{{/* The egress rule to the cluster DNS, shared by every NetworkPolicy. */}}
{{- define "gen3ws.dnsEgress" -}}
- to:
    - namespaceSelector:
        {{- toYaml .Values.networkPolicy.dns.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 8 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/*
A peer for pods of this release in the release namespace, seen from a policy in namespace
.from: a namespaceSelector is needed when users' servers live elsewhere.
Usage: include "gen3ws.releasePeer" (dict "root" $ "component" "hub" "from" $ns)
*/}}
{{- define "gen3ws.releasePeer" -}}
- podSelector:
    matchLabels:
      {{- include "gen3ws.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
  {{- if ne .from .root.Release.Namespace }}
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .root.Release.Namespace }}
  {{- end }}
{{- end -}}

{{/* A peer for users' servers, seen from a policy in the release namespace. */}}
{{- define "gen3ws.notebookPeer" -}}
- podSelector:
    matchLabels:
      {{- include "gen3ws.notebookSelector" . | nindent 6 }}
  {{- if ne (include "gen3ws.userNamespace" .) .Release.Namespace }}
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ include "gen3ws.userNamespace" . }}
  {{- end }}
{{- end -}}

{{/*
The egress whitelist, one squid dstdomain entry per line. Squid refuses to load (or silently
drops entries from) a list where one entry is covered by another, e.g. "github.com" next to
".github.com", so covered entries are left out here.
*/}}
{{- define "gen3ws.whitelist" -}}
{{- $wl := .Values.egressProxy.whitelist -}}
{{- $entries := concat $wl.domains $wl.wildcardDomains -}}
{{- if $wl.includeCommons -}}
{{- $entries = append $entries (first (splitList ":" (include "gen3ws.commonsHost" .))) -}}
{{- end -}}
{{- $entries = $entries | uniq -}}
{{- $wildcards := list -}}
{{- range $entries -}}{{- if hasPrefix "." . -}}{{- $wildcards = append $wildcards . -}}{{- end -}}{{- end -}}
{{- $kept := list -}}
{{- range $e := $entries -}}
{{- $dotted := printf ".%s" (trimPrefix "." $e) -}}
{{- $covered := false -}}
{{- range $w := $wildcards -}}
{{- if and (ne $w $e) (hasSuffix $w $dotted) -}}{{- $covered = true -}}{{- end -}}
{{- end -}}
{{- if not $covered -}}{{- $kept = append $kept $e -}}{{- end -}}
{{- end -}}
{{- join "\n" (sortAlpha $kept) -}}
{{- end -}}

{{- define "gen3ws.engineImage" -}}
{{- $i := .Values.proxy.image -}}
{{- printf "%s:%s@%s" $i.repository $i.tag $i.digest -}}
{{- end -}}

{{/*
The engine's nginx.conf: files/engine.conf, the same file `gen3-workspace up` renders
(gen3workspace.hub.engine.render), with the same placeholders filled. Forwarding headers say
https and the public host when the commons is https, as the hub's public_url does
(gen3workspace.hub.chartconfig).
*/}}
{{- define "gen3ws.engineConf" -}}
{{- $https := hasPrefix "https://" (include "gen3ws.commonsUrl" .) -}}
{{- .Files.Get "files/engine.conf"
  | replace "@USER_DIRECTIVE@" ""
  | replace "@ACCESS_LOG@" "/dev/stdout gen3"
  | replace "@HUB_PREFIX@" (printf "%shub/" .Values.hub.baseUrl)
  | replace "@BASE_URL@" .Values.hub.baseUrl
  | replace "@HUB@" (printf "%s.%s.svc:8081" (include "gen3ws.hubService" .) .Release.Namespace)
  | replace "@LISTEN@" "8080"
  | replace "@FORWARDED_PROTO@" (ternary "https" "$scheme" $https)
  | replace "@FORWARDED_HOST@" (ternary (include "gen3ws.hubHost" .) "$http_host" $https)
  | replace "@DECISION_CACHE_SECONDS@" (toString (int .Values.proxy.decisionCacheSeconds))
  | replace "@GENERATION@" "chart" -}}
{{- end -}}
