{{/* squid.conf of the egress proxy; tests/helm/test_squid.py runs Debian's squid with exactly this file. */}}
{{- define "gen3ws.egressMountPath" -}}/etc/gen3-workspace/egress-proxy{{- end -}}

{{- define "gen3ws.squidConf" -}}
{{- $e := .Values.egressProxy -}}
# squid.conf of the Gen3 Workspace egress proxy, rendered by the gen3-workspace Helm chart.
# Do not edit it in the cluster: change the chart values (egressProxy.*) and helm upgrade.
# Users' servers may reach only the domains in whitelist.txt; everything else is refused.

http_port {{ $e.port }}
visible_hostname {{ include "gen3ws.egressService" . }}

acl workspace_clients src {{ join " " $e.allowedClients }}
acl SSL_ports port {{ join " " $e.sslPorts }}
acl Safe_ports port {{ join " " $e.safePorts }}
# -n: never match an IP address by its reverse DNS name; a bare IP is simply not whitelisted.
acl whitelist dstdomain -n "{{ include "gen3ws.egressMountPath" . }}/whitelist.txt"
# The cloud metadata services hand out node credentials: never reachable, whatever a
# whitelisted name resolves to and whatever an operator lists as internal.
acl metadata dst {{ include "gen3ws.metadataAddresses" . }}
# Everything that is not the public internet (private, shared, loopback, link-local, ...), and
# egressProxy.deniedDestinations: a whitelisted name that resolves there (a DNS record pointing
# into the commons, DNS rebinding) is refused before squid connects. dst matches when any of
# the name's addresses is listed.
acl blocked_destinations dst {{ include "gen3ws.nonPublicV4" . }} {{ include "gen3ws.nonPublicV6" . }}{{ range $e.deniedDestinations }} {{ . }}{{ end }}
{{- with $e.internalDestinations }}
# Internal addresses the operator allows for whitelisted names (egressProxy.internalDestinations).
acl internal_destinations dst {{ join " " . }}
{{- end }}

http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access deny manager
http_access deny !workspace_clients
http_access deny !whitelist
http_access deny metadata
{{- if $e.internalDestinations }}
http_access deny blocked_destinations !internal_destinations
{{- else }}
http_access deny blocked_destinations
{{- end }}
http_access allow whitelist
http_access deny all

# A filter, not a cache: nothing is stored, so users never see each other's downloads.
cache deny all
cache_mem 0 MB
# Nothing is written to the container's file system: it is read-only, and squid is not root.
pid_filename none
netdb_filename none
access_log stdio:/dev/stdout
cache_log /dev/stderr
logfile_rotate 0
pinger_enable off
# Container runtimes often allow ~1M open files, and squid sizes its tables by that limit.
max_filedescriptors 16384
# Do not tell outside servers the addresses of users' pods, nor that a proxy is in between.
forwarded_for delete
via off
httpd_suppress_version_string on
shutdown_lifetime 5 seconds
{{- end -}}
