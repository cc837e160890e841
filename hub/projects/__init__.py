"""Company project spaces: a hub group marked as a project, with a shared setgid directory."""
