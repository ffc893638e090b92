{{/* The hub's non-secret config, read by gen3workspace.hub.chartconfig.apply(). */}}
{{- define "gen3ws.hubConfigYaml" -}}
{{- $ancestors := concat (list (include "gen3ws.commonsUrl" .)) .Values.hub.frameAncestors | uniq -}}
{{- $cfg := dict
  "release" (dict "name" .Release.Name "namespace" .Release.Namespace)
  "commons" (dict "url" (include "gen3ws.commonsUrl" .) "name" .Values.commons.name "logoUrl" .Values.commons.logoUrl)
  "hub" (dict
    "host" (include "gen3ws.hubHost" .)
    "baseUrl" .Values.hub.baseUrl
    "connectUrl" (include "gen3ws.hubConnectUrl" .)
    "frameAncestors" $ancestors
    "db" (dict "type" .Values.hub.db.type "url" .Values.hub.db.url "sqlitePath" "/srv/jupyterhub/jupyterhub.sqlite")
    "config" .Values.hub.config
    "extraConfig" .Values.hub.extraConfig
    "generatedKeys" (ternary (dict) (dict "secret" (include "gen3ws.hubSecret" .) "namespace" .Release.Namespace) (not (empty .Values.hub.existingSecret.name))))
  "auth" (dict
    "clientId" .Values.auth.clientId
    "callbackUrl" (include "gen3ws.callbackUrl" .)
    "workspace" .Values.auth.workspace
    "adminGroups" .Values.auth.adminGroups
    "fenceAdmins" .Values.auth.fenceAdmins
    "authzGroups" .Values.auth.authzGroups
    "logoutRedirectUrl" .Values.auth.logoutRedirectUrl)
  "spawner" (dict
    "namespace" (include "gen3ws.userNamespace" .)
    "flavorFile" "/usr/local/etc/gen3-workspace/flavors/flavors.yaml"
    "egressProxy" (include "gen3ws.egressProxyUrl" .)
    "noProxy" .Values.spawner.noProxy
    "issueApiKey" .Values.spawner.issueApiKey
    "drive" .Values.spawner.drive
    "commonLabels" (include "gen3ws.notebookLabels" . | fromYaml))
  "culler" .Values.culler
  "portal" .Values.portal
-}}
{{- toYaml $cfg -}}
{{- end -}}
