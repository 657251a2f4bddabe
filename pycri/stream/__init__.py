"""The streaming server: the HTTP endpoint behind the URLs Exec, Attach and PortForward return.

Clients (kubelet's proxy, crictl, critest) upgrade the connection to SPDY/3.1 or to a
WebSocket and speak Kubernetes' remotecommand and portforward protocols over it.
"""
