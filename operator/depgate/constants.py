"""depgate's vocabulary: the names and words it writes, each defined once (literals only, no imports).

The waiter (`depgate wait`, in every init container) imports this module too, so it stays free of
imports: anything with a dataclass or a table of kinds lives in depgate.registry.
"""

# The DependencyPolicy API (crds/dependencypolicies.depgate.io.yaml)
GROUP = "depgate.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DependencyPolicy"
PLURAL = "dependencypolicies"

DEFAULT_NAMESPACE = "default"  # of an object (a policy on disk, a listed object) that names none
FIELD_MANAGER = "depgate"  # server-side apply's field manager for everything depgate writes
WAITER_IMAGE_ENV = "DEPGATE_WAITER_IMAGE"  # the environment variable `depgate run` and `depgate render` read

# Names depgate owns inside a pod template: every init container, volume and volume mount whose name
# starts with the prefix is depgate's (dropped and rebuilt on each render).
CONTAINER_PREFIX = "depgate-"
SHARED_VOLUME = CONTAINER_PREFIX + "shared"
TOKEN_VOLUME = CONTAINER_PREFIX + "token"
CA_VOLUME_PREFIX = CONTAINER_PREFIX + "ca-"
WAIT_ROLE_PREFIX = CONTAINER_PREFIX + "wait-"  # the Role and RoleBinding that let the pods read their policy

# Annotations on the Deployments depgate gates
POLICY_ANNOTATION = f"{GROUP}/policy"  # the policy that claims the Deployment
APPLIED_HASH_ANNOTATION = f"{GROUP}/applied"  # the hash of depgate's last apply body
FINALIZER = f"{GROUP}/cleanup"  # on every policy: its on.delete handler releases its Deployments first

# An API request (a custom watch's list included; not the watches) that takes longer fails and is retried
REQUEST_TIMEOUT_SECONDS = 30.0

# A precondition's state in status.preconditions[] (the operator's verdicts use the same words)
SATISFIED = "Satisfied"
BLOCKING = "Blocking"
PENDING = "Pending"
FAILED = "Failed"
UNKNOWN = "Unknown"
STATES = (SATISFIED, BLOCKING, PENDING, FAILED, UNKNOWN)
BLOCKING_STATES = (BLOCKING, FAILED)  # the states that put a precondition in status.blocking

# Precondition groups (depgate.registry gives each type its group)
NETWORK = "network"  # judged in the pod by `depgate wait <type>`: a connection, a request, a lookup
TASK = "task"  # run in the pod to completion: a download, the user's own command
API = "api"  # judged by the operator from API objects; the pod's `depgate wait verdict` reads the verdict


def container_name(precondition: str) -> str:
    """The init container of the precondition named `precondition`."""
    return CONTAINER_PREFIX + precondition


# Authority (depgate.authority): who wrote a policy, signed by depgate's admission webhook
AUTHOR_ANNOTATION = f"{GROUP}/author"  # the user (or ServiceAccount) whose rights the policy runs with
AUTHOR_SIGNATURE_ANNOTATION = f"{GROUP}/author-signature"  # HMAC over namespace, name, generation, author
WEBHOOK_CONFIGURATION = GROUP  # the Validating- and MutatingWebhookConfiguration depgate serves
WEBHOOK_SECRET = "depgate-webhook"  # in the operator's namespace: the signing key and the webhook's certificate
DEFAULT_OPERATOR_NAMESPACE = "depgate-system"
OPERATOR_NAMESPACE_ENV = "DEPGATE_OPERATOR_NAMESPACE"
