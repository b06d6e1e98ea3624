"""HAR: a temporal conv net that recognises activities from windows of 9-channel IMU data."""
