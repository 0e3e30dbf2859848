"""A checker of the Pod Security Standards "restricted" profile (Kubernetes 1.31 rules), on plain dicts.

It implements the baseline and restricted controls of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ that a pod spec can violate:
host namespaces, privileged, capabilities, hostPath and other volume types, host ports, AppArmor,
SELinux, /proc mount, seccomp, sysctls, privilege escalation, running as non-root and as uid 0.
It returns every violation as text, so a failing test names them all.
"""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                        "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Pod, a Job, a CronJob or a workload controller."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def check_restricted(pod: dict[str, Any]) -> list[str]:
    """Violations of the restricted profile by a pod spec (empty when it complies)."""
    errs: list[str] = []
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            errs.append(f"spec.{key} must not be true")
    for vol in pod.get("volumes") or []:
        types = set(vol) - {"name"}
        if not types <= ALLOWED_VOLUME_TYPES:
            errs.append(f"volume {vol.get('name')!r} uses {sorted(types - ALLOWED_VOLUME_TYPES)}; allowed: "
                        f"{sorted(ALLOWED_VOLUME_TYPES)}")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            errs.append(f"sysctl {sysctl.get('name')!r} is not in the safe set")
    errs += _check_context("spec.securityContext", psc, pod_level=True)
    pod_nonroot = psc.get("runAsNonRoot")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    containers = [("containers", c) for c in pod.get("containers") or []]
    containers += [("initContainers", c) for c in pod.get("initContainers") or []]
    containers += [("ephemeralContainers", c) for c in pod.get("ephemeralContainers") or []]
    if not pod.get("containers"):
        errs.append("the pod has no containers")
    for field, c in containers:
        where = f"{field}[{c.get('name')}]"
        csc = c.get("securityContext") or {}
        errs += _check_context(f"{where}.securityContext", csc, pod_level=False)
        if csc.get("privileged"):
            errs.append(f"{where}: privileged must not be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            errs.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = csc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            errs.append(f"{where}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            errs.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE, not {sorted(extra)}")
        nonroot = csc.get("runAsNonRoot", pod_nonroot)
        if nonroot is not True:
            errs.append(f"{where}: runAsNonRoot must be true (in the container or the pod)")
        seccomp = (csc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            errs.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (got {seccomp!r})")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                errs.append(f"{where}: hostPort {port['hostPort']} is not allowed")
    return errs


def _check_context(where: str, sc: dict[str, Any], pod_level: bool) -> list[str]:
    errs = []
    if sc.get("runAsNonRoot") is False:
        errs.append(f"{where}.runAsNonRoot must not be false")
    if sc.get("runAsUser") == 0:
        errs.append(f"{where}.runAsUser must not be 0")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in ("RuntimeDefault", "Localhost"):
        errs.append(f"{where}.seccompProfile.type {seccomp!r} is not allowed")
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in ("RuntimeDefault", "Localhost"):
        errs.append(f"{where}.appArmorProfile.type {apparmor!r} is not allowed")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        errs.append(f"{where}.seLinuxOptions may only set an allowed type")
    if not pod_level and sc.get("procMount", "Default") != "Default":
        errs.append(f"{where}.procMount must be Default")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        errs.append(f"{where}.windowsOptions.hostProcess must not be true")
    return errs
